"""``ess replay`` and ``ess record`` from the command line, with no broker running."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from ess.operator.cli import cli
from schemas import ReasonCode, encode
from tests.audit import T0, Builder, pnl, reset_entry, s, security, trip_entry
from tests.statelog_support import OPERATOR_KEYS, PROCESSOR


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Nothing listens here: a replay that tried to reach Kafka would fail.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.delenv("ESS_DETECT_CONFIG", raising=False)
    monkeypatch.delenv("ESS_DETECT_TICK_INTERVAL_SEC", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    # The recorded state log is verified with the keys a deployment would install.
    keys = tmp_path_factory.mktemp("keys")
    (keys / "processors").mkdir()
    (keys / "processors" / "processor.pub").write_text(base64.b64encode(PROCESSOR.public).decode())
    (keys / "operators").mkdir()
    for name, public in OPERATOR_KEYS.items():
        (keys / "operators" / f"{name}.pub").write_text(base64.b64encode(public).decode())
    monkeypatch.setenv("ESS_PROCESSOR_KEYS_DIR", str(keys / "processors"))
    monkeypatch.setenv("ESS_OPERATOR_KEYS_DIR", str(keys / "operators"))
    monkeypatch.delenv("ESS_STATE_LOG_UNSIGNED_BEFORE", raising=False)


def recording(directory: Path, *, with_state: bool = True) -> Path:
    b = Builder(directory)
    coords = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    for i, equity in enumerate((1000, 970, 940)):
        b.add("pnl", "acct-1", pnl("acct-1", equity, T0 + s(100 * i)), T0 + s(100 * i))
    if with_state:
        b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", coords, T0))
    b.close()
    return directory


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_a_matching_replay_exits_0_and_writes_the_report(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    result = run("replay", str(directory))

    assert result.exit_code == 0, result.output
    assert "MATCH: the replay decided exactly what the live run did" in result.output
    report = directory / "replay-report.html"
    assert "<svg" in report.read_text(encoding="utf-8")


def test_a_differing_replay_exits_1(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec", with_state=False)

    result = run("replay", str(directory), "--report", str(tmp_path / "out.html"))

    assert result.exit_code == 1, result.output
    assert "extra in replay" in result.output
    assert "DIFFERENT: 1 trip decision(s) differ" in result.output
    assert (tmp_path / "out.html").is_file()


def test_a_what_if_replay_shows_moves_and_exits_0(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    # 940 is a 6 % loss: a 5 % daily-loss limit would have tripped acct-1.
    result = run("replay", str(directory), "--set", "account.daily_loss=5%")

    assert result.exit_code == 0, result.output
    assert "new" in result.output
    assert "acct-1" in result.output
    assert "what-if replay" in result.output


def test_the_live_config_file_is_used(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")
    config = tmp_path / "detect.toml"
    config.write_text("[account]\ndaily_loss = 0.05\n")

    # The live run (per its recorded state) did not trip on daily loss; with a config of
    # 5 % the replay does: an audit failure, not a what-if.
    result = run("replay", str(directory), "--config", str(config))

    assert result.exit_code == 1, result.output
    assert "extra in replay" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "{tmp}/nope"], "does not exist"),
        (["replay", "{tmp}"], "has no manifest.json"),
        (["replay", "{rec}", "--set", "dailyloss=0.1"], "unknown setting 'dailyloss'"),
        (["replay", "{rec}", "--set", "account.daily_loss=2"], "Input should be less than 1"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    directory = recording(tmp_path / "rec")
    argv = [a.format(tmp=tmp_path, rec=directory) for a in args]

    result = run(*argv)

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_damaged_recording_exits_2(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")
    (directory / "ess.pnl.jsonl").write_text("{broken\n")

    result = run("replay", str(directory))

    assert result.exit_code == 2, result.output
    assert "ess.pnl.jsonl line 1: not JSON" in " ".join(result.output.split())


def test_record_refuses_to_overwrite_a_recording(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    result = run("record", "--out", str(directory))

    assert result.exit_code == 1
    assert "already holds a recording" in result.output


def test_a_foreign_state_record_is_reported_and_not_applied(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    b = Builder(directory)
    coords = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", coords, T0))
    b.raw_state(encode(reset_entry(1, T0 + s(1))), T0 + s(1))  # unsigned: foreign
    b.close()

    result = run("replay", str(directory))

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 record(s) of the recorded state log did not verify" in text
    assert "first at offset 1: unsigned" in text


def test_a_replay_without_trusted_processor_keys_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = recording(tmp_path / "rec")
    monkeypatch.setenv("ESS_PROCESSOR_KEYS_DIR", str(tmp_path / "no-keys"))

    result = run("replay", str(directory))

    assert result.exit_code == 2, result.output
    assert "cannot verify the recorded state log" in " ".join(result.output.split())


# --------------------------------------------------------------------------- --json, report paths


def test_json_prints_only_the_document_on_stdout(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    result = run("replay", str(directory), "--json")

    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)  # nothing but the document on stdout
    assert document["format"] == "ess.replay/1"
    assert document["verdict"]["result"] == "match"
    assert [d["rule"] for d in document["decisions"]["replayed"]] == ["api_key_changed"]
    assert document["report"] == str(directory / "replay-report.html")
    assert (directory / "replay-report.html").is_file()
    assert "report:" in result.stderr


def test_json_keeps_the_exit_code_of_a_difference(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec", with_state=False)

    result = run("replay", str(directory), "--json", "--no-report")

    assert result.exit_code == 1, result.output
    document = orjson.loads(result.stdout)
    assert document["verdict"]["result"] == "different"
    assert document["matching"][0]["category"] == "only_replayed"
    assert document["report"] is None
    assert not (directory / "replay-report.html").exists()


def test_a_what_if_never_replaces_the_audit_report(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")
    assert run("replay", str(directory)).exit_code == 0
    audit = (directory / "replay-report.html").read_text(encoding="utf-8")

    five = run("replay", str(directory), "--set", "account.daily_loss=5%")
    seven = run("replay", str(directory), "--set", "account.daily_loss=7%")

    assert five.exit_code == seven.exit_code == 0, five.output + seven.output
    assert (directory / "replay-report.html").read_text(encoding="utf-8") == audit
    what_ifs = sorted(directory.glob("replay-report-whatif-*.html"))
    assert len(what_ifs) == 2
    assert "what-if replay" in what_ifs[0].read_text(encoding="utf-8")
    assert f"report: {what_ifs[0]}" in " ".join(five.output.split()) + " ".join(
        seven.output.split()
    )


def test_a_what_if_may_not_write_the_audit_report(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    result = run(
        "replay",
        str(directory),
        "--set",
        "account.daily_loss=5%",
        "--report",
        str(directory / "replay-report.html"),
    )

    assert result.exit_code == 2, result.output
    assert "is the audit report of this recording" in " ".join(result.output.split())
    assert not (directory / "replay-report.html").exists()


def test_report_and_no_report_exclude_each_other(tmp_path: Path) -> None:
    directory = recording(tmp_path / "rec")

    result = run("replay", str(directory), "--no-report", "--report", str(tmp_path / "r.html"))

    assert result.exit_code == 2, result.output
    assert "--report and --no-report exclude each other" in result.output
