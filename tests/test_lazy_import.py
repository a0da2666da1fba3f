"""``import ess`` is light: a trading service importing the gate does not load the in-process API.

Each check runs in a fresh interpreter, because this test process has long since imported
everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import ess

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("ess.api.controller", "ess.api.fakes", "ess.api.system")


def _run(code: str) -> Any:
    """Run ``code`` in a new interpreter and return the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_gate_leaves_the_in_process_api_unloaded() -> None:
    loaded = _run(
        f"""
        import json, sys
        import ess.gate
        print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))
        """
    )
    assert loaded == []


def test_top_level_names_still_import_on_demand() -> None:
    report = _run(
        """
        import json, sys
        from ess import EmergencyStopController, __version__
        import ess
        try:
            ess.NoSuchThing
        except AttributeError as error:
            missing = str(error)
        else:
            missing = None
        print(json.dumps({
            "controller": EmergencyStopController.__module__,
            "version": __version__,
            "loaded": "ess.api.controller" in sys.modules,
            "fakes_loaded": "ess.api.fakes" in sys.modules,
            "missing": missing,
        }))
        """
    )
    assert report["controller"] == "ess.api.controller"
    assert report["version"] == ess.__version__
    assert report["loaded"] is True
    assert report["missing"] is not None
    assert "NoSuchThing" in report["missing"]


def test_every_exported_name_resolves_and_is_listed_by_dir() -> None:
    for name in ess.__all__:
        assert getattr(ess, name) is not None, name
    assert set(ess.__all__) <= set(dir(ess))
