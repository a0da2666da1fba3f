"""Export every contract record as JSON Schema under ``schemas/json/`` (``make schemas``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.records import RECORD_TYPES

JSON_DIR = Path(__file__).parent / "json"


def render_all() -> dict[str, str]:
    """File name -> JSON Schema text, for every record type, deterministic."""
    return {
        f"{name}.json": json.dumps(
            model.model_json_schema(mode="validation"), indent=2, sort_keys=True
        )
        + "\n"
        for name, model in sorted(RECORD_TYPES.items())
    }


def main() -> int:
    """Write the schemas and remove stale files; prints what changed."""
    JSON_DIR.mkdir(exist_ok=True)
    wanted = render_all()
    for stale in sorted({p.name for p in JSON_DIR.glob("*.json")} - set(wanted)):
        (JSON_DIR / stale).unlink()
        sys.stdout.write(f"removed {stale}\n")
    for name, text in wanted.items():
        path = JSON_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            sys.stdout.write(f"wrote {name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
