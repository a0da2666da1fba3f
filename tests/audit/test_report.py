"""The terminal table and the HTML report of a replay."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

from rich.console import Console

from ess.audit.compare import compare
from ess.audit.replay import replay
from ess.audit.report import _drawdown, decisions_table, print_summary, write_html_report
from ess.rules.config import DetectionConfig
from schemas import ReasonCode
from tests.audit import T0, TRUST, Builder, pnl, reset_entry, s, trip_entry

CONFIG = DetectionConfig(account=DetectionConfig().account.model_copy(update={"flash_crash": 0.5}))
ODD = "acct-<b>&'x"


def recording(directory: Path) -> None:
    b = Builder(directory)
    for i, equity in enumerate((1000, 1020, 980, 900)):
        coords = b.add("pnl", ODD, pnl(ODD, equity, T0 + s(i)), T0 + s(i))
    b.add("pnl", "acct-calm", pnl("acct-calm", 500, T0), T0)
    b.state(trip_entry(0, "daily_loss", ReasonCode.DAILY_LOSS, ODD, coords, T0 + s(3)))
    b.state(reset_entry(1, T0 + s(10)))
    b.close()


def test_html_report_has_an_svg_chart_per_account_with_trip_markers(tmp_path: Path) -> None:
    recording(tmp_path)
    result = replay(tmp_path, CONFIG, trust=TRUST)
    comparison = compare(result.recorded, result.replayed)

    path = write_html_report(
        tmp_path / "report.html", result, comparison, overrides=["account.daily_loss=0.07"]
    )

    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<svg") == 2  # both accounts
    assert text.count('<g class="trip recorded">') == 1
    assert text.count('<g class="trip replayed">') == 1
    assert 'class="equity"' in text
    assert 'class="drawdown"' in text
    assert "daily_loss (daily_loss) at 2026-11-23T09:00:03.000+00:00" in text
    assert "MATCH" in text
    assert "account.daily_loss=0.07" in text
    # Names come from producers: escaped, never markup.
    assert ODD not in text
    assert "acct-&lt;b&gt;&amp;&#x27;x" in text
    # The account with a trip comes first.
    assert text.index("acct-&lt;b&gt;") < text.index("<h3>acct-calm")
    assert re.search(r'<polyline class="equity" points="[\d., ]+"/>', text)
    # Each chart is well-formed SVG, its curve inside the plot.
    for svg in re.findall(r"<svg.*?</svg>", text, re.DOTALL):
        root = ElementTree.fromstring(svg)
        line = root.find("{http://www.w3.org/2000/svg}polyline")
        assert line is not None
        xs = [float(point.split(",")[0]) for point in line.get("points", "").split()]
        assert 50 <= min(xs) <= max(xs) <= 830


def test_drawdown_is_from_the_running_peak_and_restarts_after_a_reset() -> None:
    points = [(T0 + s(i), e) for i, e in enumerate((100.0, 120.0, 90.0, 80.0, 100.0))]

    assert _drawdown(points, []) == [0.0, 0.0, 0.25, 1 / 3, 1 / 6]
    # A reset at T0+2.5 s: the peak re-anchors at the next tick (80), as the loss rules do.
    assert _drawdown(points, [T0 + s(2.5)]) == [0.0, 0.0, 0.25, 0.0, 0.0]


def test_terminal_output_shows_both_sides_and_the_verdict(tmp_path: Path) -> None:
    recording(tmp_path)
    result = replay(tmp_path, CONFIG, trust=TRUST)
    comparison = compare(result.recorded, result.replayed)
    console = Console(record=True, width=200)

    print_summary(console, result, comparison)

    text = console.export_text()
    assert "recorded vs replayed trips" in text
    assert text.count("ess.pnl[") == 2  # recorded and replayed trigger
    assert "match" in text
    assert "MATCH: the replay decided exactly what the live run did" in text
    assert "1 reset(s) applied" in text


def test_table_puts_differences_first_when_cut(tmp_path: Path) -> None:
    recording(tmp_path)
    result = replay(tmp_path, CONFIG, trust=TRUST)
    # Pretend the live run decided nothing: the replay's trip is "extra".
    comparison = compare([], result.replayed)
    console = Console(record=True, width=200)

    console.print(decisions_table(comparison, limit=1))

    assert "extra in replay" in console.export_text()


def test_the_table_shows_a_key_with_brackets_as_text(tmp_path: Path) -> None:
    recording(tmp_path)
    result = replay(tmp_path, CONFIG, trust=TRUST)
    # A Kafka key comes from a producer: rich markup in it is shown, never interpreted.
    odd = [replace(d, subject="acct-[bold]x[/]") for d in result.replayed]
    console = Console(record=True, width=200)

    console.print(decisions_table(compare([], odd)))

    assert "acct-[bold]x[/]" in console.export_text()
