"""JSON Schema drift: the committed ``schemas/json/*.json`` must match the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ess.roles.command.processor import decode_command
from schemas import RECORD_TYPES, RecordError, TripCommand, export
from schemas.export import JSON_DIR, render_all

from .examples import EXAMPLES

FIX = "the committed JSON Schemas are out of date: run `make schemas` (python -m schemas.export)"


def committed() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(JSON_DIR.glob("*.json"))}


def test_render_all_when_called_then_one_file_per_record_type() -> None:
    assert set(render_all()) == {f"{name}.json" for name in RECORD_TYPES}


def test_render_all_when_called_twice_then_identical_text() -> None:
    assert render_all() == render_all()


def test_rendered_schemas_when_parsed_then_valid_json_titled_by_model() -> None:
    for file_name, text in render_all().items():
        schema = json.loads(text)
        assert schema["title"] == file_name.removesuffix(".json")
        assert text.endswith("\n")


def test_committed_schema_files_when_listed_then_same_set_as_rendered() -> None:
    missing = sorted(set(render_all()) - set(committed()))
    stale = sorted(set(committed()) - set(render_all()))

    assert not missing, f"{FIX}; missing files: {missing}"
    assert not stale, f"{FIX}; files no longer rendered: {stale}"


def test_committed_schema_texts_when_compared_then_identical_to_rendered() -> None:
    on_disk = committed()

    drifted = sorted(name for name, text in render_all().items() if on_disk.get(name) != text)

    assert not drifted, f"{FIX}; differing files: {drifted}"


def test_export_main_when_run_into_empty_dir_then_writes_every_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "json"
    monkeypatch.setattr(export, "JSON_DIR", target)

    assert export.main() == 0

    written = {path.name: path.read_text() for path in target.glob("*.json")}
    assert written == render_all()
    assert capsys.readouterr().out.count("wrote ") == len(RECORD_TYPES)


def test_export_main_when_run_again_then_removes_stale_and_rewrites_only_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(export, "JSON_DIR", tmp_path)
    export.main()
    (tmp_path / "Retired.json").write_text("{}\n")
    (tmp_path / "Fill.json").write_text("{}\n")
    capsys.readouterr()

    export.main()

    out = capsys.readouterr().out
    assert out == "removed Retired.json\nwrote Fill.json\n"
    assert {path.name: path.read_text() for path in tmp_path.glob("*.json")} == render_all()


def exported(name: str) -> dict[str, Any]:
    """The JSON Schema exported for record type ``name``, parsed."""
    schema: dict[str, Any] = json.loads(render_all()[f"{name}.json"])
    return schema


def test_trip_command_schema_when_exported_then_kind_optional() -> None:
    schema = exported("TripCommand")

    assert "kind" in schema["properties"]
    assert "kind" not in schema["required"]


def test_reset_command_schema_when_exported_then_kind_required() -> None:
    schema = exported("ResetCommand")

    assert "kind" in schema["required"]
    assert schema["properties"]["kind"]["const"] == "reset"


def test_committed_command_schemas_when_read_then_kind_required_only_for_reset() -> None:
    names = ("TripCommand", "ResetCommand")
    on_disk = {name: json.loads(committed()[f"{name}.json"]) for name in names}

    assert "kind" not in on_disk["TripCommand"]["required"]
    assert "kind" in on_disk["ResetCommand"]["required"]


def test_trip_without_kind_valid_per_exported_schema_when_processed_then_decoded_as_trip() -> None:
    """What a producer that follows the exported TripCommand schema may send (exactly its
    required fields, no ``kind``) is obeyed by the command processor as a trip."""
    schema = exported("TripCommand")
    required = schema["required"]
    example = EXAMPLES["TripCommand"]
    minimal = {field: example[field] for field in required}
    assert "kind" not in minimal

    command = decode_command(json.dumps(minimal).encode())

    assert isinstance(command, TripCommand)
    assert command.kind == "trip"
    assert command.command_id == example["command_id"]


def test_reset_without_kind_when_processed_then_never_a_reset() -> None:
    """A reset-shaped record without ``kind`` violates the exported ResetCommand schema and
    is never decoded as a reset (it is not a valid trip either)."""
    data = {k: v for k, v in EXAMPLES["ResetCommand"].items() if k != "kind"}

    with pytest.raises(RecordError):
        decode_command(json.dumps(data).encode())
