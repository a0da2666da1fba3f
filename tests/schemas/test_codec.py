"""The codec refuses what a lax parser would let through: implausible clocks, wrong types."""

from __future__ import annotations

import orjson
import pytest

from schemas import PnlTick, RecordError, decode


@pytest.mark.parametrize(
    "ts",
    [
        "1999-12-31T23:59:59+00:00",
        "2100-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59-23:59",  # no UTC equivalent at all
        "0001-01-01T00:00:00+23:59",
    ],
)
def test_implausible_event_times_are_refused(ts: str) -> None:
    raw = orjson.dumps({"event_id": "e", "account_id": "a", "equity": 1.0, "ts": ts})
    with pytest.raises(RecordError, match="timestamp outside 2000-2099"):
        decode(PnlTick, raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [("equity", True), ("equity", "1.5"), ("ts", 1_790_000_000)],
)
def test_wrong_json_types_are_refused_not_coerced(field: str, value: object) -> None:
    record = {"event_id": "e", "account_id": "a", "equity": 1.0, "ts": "2026-11-30T10:00:00Z"}
    with pytest.raises(RecordError, match=field):
        decode(PnlTick, orjson.dumps({**record, field: value}))
