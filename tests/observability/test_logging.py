"""The JSON log sink never loses a line to what it is asked to print."""

from __future__ import annotations

import io
import json

from loguru import logger

from ess.observability.logging import configure_logging


def test_a_line_with_lone_surrogates_is_written_escaped_not_lost() -> None:
    # Found by the in-process campaign: an evaluator raising with text that is not valid
    # UTF-8 (lone surrogates) made the sink raise, and loguru dropped the line.
    sink = io.StringIO()
    configure_logging("INFO", json=True, sink=sink)
    try:
        logger.bind(error="RuntimeError: \ud800 lone \udfff", nested={"k": ["\udfff"]}).error(
            "evaluator failed \ud800"
        )
    finally:
        configure_logging("WARNING", json=False)
    [line] = sink.getvalue().splitlines()
    record = json.loads(line)
    assert record["msg"] == "evaluator failed \\ud800"
    assert record["error"] == "RuntimeError: \\ud800 lone \\udfff"
    assert record["nested"] == {"k": ["\\udfff"]}
