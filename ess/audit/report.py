"""Showing a replay: a rich table for the terminal and a self-contained HTML report.

The HTML report has no dependencies and loads nothing from the network: styles are inline
and the charts are SVG built here. Per account (from the recorded ``ess.pnl``): the equity
curve, the drawdown from the running peak (re-anchored after each reset, as the loss rules
do), and a marker at the event time of every trip of that account, recorded (solid) and
replayed (dashed), with the details as a tooltip.

Both also show the operator actions of the recorded state log (manual trips, resets,
approvals, rejected resets) as a timeline of their own: human decisions, which a replay does
not make and the comparison never counts.

Where the report goes (:func:`report_path`): an audit replay writes
``DIR/replay-report.html``; a what-if replay writes
``DIR/replay-report-whatif-<hash>.html``, the hash naming its overrides, so that what-ifs
never replace the audit report nor each other.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ess.audit.compare import AGREEING, Comparison, Outcome, Row, trigger_text
from ess.audit.overrides import parse_assignment
from ess.audit.recording import read_topic
from ess.audit.replay import Decision, OperatorAction, ReplayResult
from ess.errors import EssError

__all__ = [
    "ACTIONS_NOTE",
    "AUDIT_REPORT",
    "ReportPathError",
    "actions_table",
    "decisions_table",
    "default_report_path",
    "html_report",
    "overrides_hash",
    "print_summary",
    "report_path",
    "write_html_report",
]

#: File name of the audit (no ``--set``) report in the recording's directory.
AUDIT_REPORT: Final = "replay-report.html"
#: Hex digits of the overrides' hash in a what-if report's name.
_HASH_DIGITS: Final = 10

#: Charts in one report, accounts with trips first: a report must open in a browser.
MAX_ACCOUNTS: Final = 50
#: Points per curve; longer series keep each bucket's lowest and highest point.
MAX_POINTS: Final = 400
_WIDTH, _EQ_HEIGHT, _DD_HEIGHT, _PAD = 880, 170, 70, 50

_STYLE: Final = {
    Outcome.MATCH: "green",
    Outcome.UNCHANGED: "green",
    Outcome.OUTSIDE: "dim",
    Outcome.EARLIER: "yellow",
    Outcome.LATER: "yellow",
    Outcome.CHANGED: "yellow",
    Outcome.NEW: "cyan",
    Outcome.GONE: "magenta",
}


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _side(decision: Decision | None) -> str:
    if decision is None:
        return "-"
    return f"{trigger_text(decision)}\n{_time(decision.event_ts)}\n{decision.kind}"


# --------------------------------------------------------------------------- report path


class ReportPathError(EssError, ValueError):
    """A report path that would overwrite the audit report with a what-if one."""


def overrides_hash(overrides: Sequence[str]) -> str:
    """A short hash naming a set of ``--set`` overrides, stable across runs and machines.

    The assignments are parsed first (:func:`~ess.audit.overrides.parse_assignment`), later
    ones winning as in :func:`~ess.audit.overrides.apply_overrides`, then hashed sorted by
    path: the order of independent ``--set`` options and the spelling of a value
    (``7%``, ``0.07``) do not change the name; any change of what is overridden does.
    Raises :class:`~ess.audit.overrides.ConfigError` for a malformed assignment."""
    settings: dict[str, object] = {}
    for text in overrides:
        path, value = parse_assignment(text)
        settings[".".join(path)] = value
    canonical = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:_HASH_DIGITS]


def default_report_path(directory: Path, overrides: Sequence[str] = ()) -> Path:
    """Where a replay of the recording in ``directory`` writes its HTML report by default:
    ``replay-report.html`` for the audit (no overrides), and for a what-if
    ``replay-report-whatif-<overrides_hash>.html``, so that several what-ifs coexist and
    none ever replaces the audit report. Pure."""
    if not overrides:
        return directory / AUDIT_REPORT
    return directory / f"replay-report-whatif-{overrides_hash(overrides)}.html"


def report_path(
    directory: Path, overrides: Sequence[str] = (), explicit: Path | None = None
) -> Path:
    """The report path of a replay: ``explicit`` (``--report``) if given, else
    :func:`default_report_path`.

    A what-if replay may not write where the audit report of the same recording goes:
    :class:`ReportPathError` says so. The paths are compared resolved (``..``, symlinks), so
    this check reads the file system; the default path itself never does."""
    if explicit is None:
        return default_report_path(directory, overrides)
    audit = directory / AUDIT_REPORT
    if overrides and explicit.resolve() == audit.resolve():
        raise ReportPathError(
            f"--report {explicit} is the audit report of this recording; a what-if replay "
            f"(--set) must not overwrite it. Leave --report out (the what-if report then goes "
            f"to {default_report_path(directory, overrides)}) or choose another file"
        )
    return explicit


# --------------------------------------------------------------------------- terminal


def decisions_table(comparison: Comparison, *, limit: int | None = None) -> Table:
    """Recorded and replayed trips side by side, one row per pair; differences first
    when ``limit`` cuts the list."""
    title = "what-if: how trips moved" if comparison.what_if else "recorded vs replayed trips"
    table = Table(title=title, show_lines=True)
    for column in ("outcome", "rule", "subject", "epoch", "recorded", "replayed", "note"):
        table.add_column(column, overflow="fold")
    rows: Sequence[Row] = comparison.rows
    if limit is not None and len(rows) > limit:
        rows = sorted(rows, key=lambda row: row.outcome in AGREEING)[:limit]
    for row in rows:
        style = _STYLE.get(row.outcome, "bold red")
        decision = row.decision
        table.add_row(
            f"[{style}]{row.outcome.value}[/]",
            f"{decision.rule}\n({decision.reason.value})",
            escape(decision.subject),  # a Kafka key: text, never rich markup
            str(decision.epoch),
            _side(row.recorded),
            _side(row.replayed),
            escape(row.note),
        )
    return table


#: Says what the operator-action timeline is, wherever it is shown.
ACTIONS_NOTE: Final = (
    "human decisions recorded in the state log: not replayed, not compared, never a difference"
)


def actions_table(actions: Sequence[OperatorAction], *, limit: int | None = None) -> Table:
    """The operator actions of the recorded state log, in log order (the first ``limit``)."""
    table = Table(title=f"operator actions ({ACTIONS_NOTE})", show_lines=False)
    for column in ("when", "seq", "who", "what", "detail", "outcome"):
        table.add_column(column, overflow="fold")
    for action in actions[:limit]:
        # Names and details come from operators and producers: text, never rich markup.
        table.add_row(
            _time(action.at),
            str(action.seq),
            escape(action.who),
            escape(action.what),
            escape(action.detail),
            f"[{_action_style(action)}]{escape(action.outcome)}[/]",
        )
    return table


#: How an action's outcome is coloured, by entry kind: a stop red, trading resumed green, a
#: refused reset amber; further trips and approvals change nothing visible.
_ACTION_STYLE: Final = {"activated": "red", "reset": "green", "reset_rejected": "magenta"}
_ACTION_CSS: Final = {"activated": "bad", "reset": "ok", "reset_rejected": "moved"}


def _action_style(action: OperatorAction) -> str:
    return _ACTION_STYLE.get(action.kind, "default")


def print_summary(
    console: Console, result: ReplayResult, comparison: Comparison, *, limit: int = 200
) -> None:
    """The decisions table, the operator actions, then the counts and the verdict."""
    if comparison.rows:
        console.print(decisions_table(comparison, limit=limit))
        if len(comparison.rows) > limit:
            console.print(f"({len(comparison.rows) - limit} more rows in the HTML report)")
    actions = result.operator_actions
    if actions:
        console.print(actions_table(actions, limit=limit))
        if len(actions) > limit:
            console.print(f"({len(actions) - limit} more operator actions in the HTML report)")
    console.print(
        f"replayed {result.records:,} records ({result.valid:,} valid, "
        f"{result.dead_letters:,} dead-lettered) in {result.seconds:.2f}s "
        f"({result.records_per_s:,.0f} records/s, {result.workers} worker"
        f"{'s' if result.workers != 1 else ''}); {len(result.resets)} reset(s) applied"
    )
    console.print(
        f"trips: {len(result.recorded)} recorded, {len(result.replayed)} replayed"
        + (
            f", {len(result.unreplayable)} recorded outside the recording"
            if result.unreplayable
            else ""
        )
    )
    if actions:
        console.print(
            f"operator actions: {len(actions)} (manual trips, resets, approvals, rejected "
            "resets; not replayed, not compared)"
        )
    if result.foreign:
        console.print(
            f"[bold red]{len(result.foreign)} record(s) of the recorded state log did not "
            f"verify[/] (never applied), first at offset {result.foreign[0].offset}: "
            f"{result.foreign[0].why}"
        )
    counts = ", ".join(f"{outcome.value}: {n}" for outcome, n in comparison.counts().items())
    if counts:
        console.print(counts)
    if comparison.what_if:
        console.print("[bold]what-if replay[/]: decisions moved as shown (not an audit verdict)")
    elif comparison.ok:
        console.print("[bold green]MATCH[/]: the replay decided exactly what the live run did")
    else:
        console.print(
            f"[bold red]DIFFERENT[/]: {len(comparison.differences)} trip decision(s) differ"
        )


# --------------------------------------------------------------------------- equity data


@dataclass(frozen=True, slots=True)
class _Series:
    account: str
    points: list[tuple[datetime, float]]


def _equity_series(result: ReplayResult) -> dict[str, _Series]:
    """Valid-looking PnL ticks of the recording, per account, in event-time order."""
    entry = result.manifest.topic("pnl")
    if entry is None:
        return {}
    series: dict[str, list[tuple[datetime, float]]] = {}
    for part in read_topic(result.directory, entry).values():
        for value in part.values:
            try:
                data = orjson.loads(value or b"")
                account, equity = data["account_id"], float(data["equity"])
                moment = datetime.fromisoformat(data["ts"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # the replay counted it as a dead letter; nothing to draw
            if isinstance(account, str) and moment.tzinfo is not None and math.isfinite(equity):
                series.setdefault(account, []).append((moment, equity))
    return {
        account: _Series(account, sorted(points, key=lambda p: p[0]))
        for account, points in series.items()
    }


def _drawdown(points: Sequence[tuple[datetime, float]], resets: Sequence[datetime]) -> list[float]:
    """Drawdown (fraction below the running peak) at each point; the peak starts afresh at
    the first tick after each reset."""
    out: list[float] = []
    peak: float | None = None
    pending = sorted(resets)
    for moment, equity in points:
        while pending and pending[0] <= moment:
            pending.pop(0)
            peak = None
        peak = equity if peak is None or equity > peak else peak
        out.append((peak - equity) / peak if peak > 0 else 0.0)
    return out


def _downsample(values: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(values) <= 2 * MAX_POINTS:
        return values
    size = len(values) / MAX_POINTS
    kept: list[tuple[float, float]] = []
    for b in range(MAX_POINTS):
        bucket = values[int(b * size) : int((b + 1) * size)]
        if bucket:
            low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
            kept.extend(sorted({low, high}))
    return kept


# --------------------------------------------------------------------------- SVG


@dataclass(frozen=True, slots=True)
class _Marker:
    at: datetime
    recorded: bool
    label: str


def _svg(
    series: _Series, drawdown: list[float], markers: list[_Marker], resets: Sequence[datetime]
) -> str:
    times = [p[0] for p in series.points] + [m.at for m in markers]
    t0, t1 = min(times).timestamp(), max(times).timestamp()
    span = (t1 - t0) or 1.0
    equities = [p[1] for p in series.points]
    low, high = min(equities), max(equities)
    if high == low:
        low, high = low - 1, high + 1
    deepest = max(max(drawdown, default=0.0), 0.01)
    plot_w = _WIDTH - 2 * _PAD
    top, dd_top = 10, 10 + _EQ_HEIGHT + 20
    height = dd_top + _DD_HEIGHT + 30

    def x(moment: datetime) -> float:
        return _PAD + (moment.timestamp() - t0) / span * plot_w

    def y_eq(equity: float) -> float:
        return top + (high - equity) / (high - low) * _EQ_HEIGHT

    def y_dd(fraction: float) -> float:
        return dd_top + fraction / deepest * _DD_HEIGHT

    equity_pts = _downsample([(x(m), y_eq(e)) for m, e in series.points])
    dd_pts = _downsample(
        [(x(m), y_dd(d)) for (m, _), d in zip(series.points, drawdown, strict=True)]
    )
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in equity_pts)
    area = " ".join(
        [f"{dd_pts[0][0]:.1f},{dd_top}"]
        + [f"{px:.1f},{py:.1f}" for px, py in dd_pts]
        + [f"{dd_pts[-1][0]:.1f},{dd_top}"]
    )
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="equity and drawdown of {html.escape(series.account)}">',
        f'<rect x="{_PAD}" y="{top}" width="{plot_w}" height="{_EQ_HEIGHT}" class="frame"/>',
        f'<rect x="{_PAD}" y="{dd_top}" width="{plot_w}" height="{_DD_HEIGHT}" class="frame"/>',
        f'<text x="{_PAD - 4}" y="{top + 10}" class="axis" text-anchor="end">{high:,.0f}</text>',
        f'<text x="{_PAD - 4}" y="{top + _EQ_HEIGHT}" class="axis" text-anchor="end">'
        f"{low:,.0f}</text>",
        f'<text x="{_PAD - 4}" y="{dd_top + 10}" class="axis" text-anchor="end">0%</text>',
        f'<text x="{_PAD - 4}" y="{dd_top + _DD_HEIGHT}" class="axis" text-anchor="end">'
        f"-{deepest:.1%}</text>",
        f'<text x="{_PAD}" y="{height - 8}" class="axis">{html.escape(_time(min(times)))}</text>',
        f'<text x="{_WIDTH - _PAD}" y="{height - 8}" class="axis" text-anchor="end">'
        f"{html.escape(_time(max(times)))}</text>",
        f'<polygon class="drawdown" points="{area}"/>',
        f'<polyline class="equity" points="{line}"/>',
    ]
    for moment in resets:
        if t0 <= moment.timestamp() <= t1:
            px = x(moment)
            parts.append(
                f'<line class="reset" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" '
                f'y2="{dd_top + _DD_HEIGHT}"><title>reset at {_time(moment)}</title></line>'
            )
    for marker in markers:
        px = x(marker.at)
        kind = "recorded" if marker.recorded else "replayed"
        tip = html.escape(f"{kind}: {marker.label}")
        parts.append(
            f'<g class="trip {kind}"><title>{tip}</title>'
            f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{dd_top + _DD_HEIGHT}"/>'
            f'<circle cx="{px:.1f}" cy="{top + (4 if marker.recorded else 12)}" r="4"/></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _markers(rows: Iterable[Row], account: str) -> list[_Marker]:
    markers = []
    for row in rows:
        for decision, recorded in ((row.recorded, True), (row.replayed, False)):
            if decision is not None and decision.subject == account:
                label = (
                    f"{decision.reason.value} ({decision.rule}) at {_time(decision.event_ts)}, "
                    f"trigger {trigger_text(decision)}; {row.outcome.value}"
                )
                markers.append(_Marker(decision.event_ts, recorded, label))
    return markers


# --------------------------------------------------------------------------- HTML

_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}
.ok{color:#176b2c}.bad{color:#b00020}.moved{color:#8a6d00}.muted{color:#777}
.chart .frame{fill:none;stroke:#ddd}.chart .axis{font-size:11px;fill:#555}
.chart .equity{fill:none;stroke:#1f5fbf;stroke-width:1.5}
.chart .drawdown{fill:#e57373;fill-opacity:.45;stroke:#c62828;stroke-width:1}
.chart .reset{stroke:#888;stroke-dasharray:2 3}
.chart .trip line{stroke-width:1.5}.chart .trip.recorded line{stroke:#b00020}
.chart .trip.recorded circle{fill:#b00020}
.chart .trip.replayed line{stroke:#1565c0;stroke-dasharray:5 3}
.chart .trip.replayed circle{fill:#1565c0}
h2{margin-top:1.5em}section.account{margin-bottom:1.5em}
table.actions td.outcome{font-weight:600}
"""


def _css_class(outcome: Outcome) -> str:
    if outcome in AGREEING:
        return "ok" if outcome is not Outcome.OUTSIDE else "muted"
    if outcome in {Outcome.EARLIER, Outcome.LATER, Outcome.CHANGED, Outcome.NEW, Outcome.GONE}:
        return "moved"
    return "bad"


def _cell(decision: Decision | None) -> str:
    if decision is None:
        return "&ndash;"
    return "<br>".join(
        html.escape(text)
        for text in (trigger_text(decision), _time(decision.event_ts), decision.kind)
    )


def html_report(
    result: ReplayResult,
    comparison: Comparison,
    *,
    overrides: Sequence[str] = (),
    max_accounts: int = MAX_ACCOUNTS,
) -> str:
    """The whole report as one HTML document."""
    esc = html.escape
    manifest = result.manifest
    if comparison.what_if:
        verdict = '<p class="moved"><b>what-if replay</b>: decisions moved as shown</p>'
    elif comparison.ok:
        verdict = '<p class="ok"><b>MATCH</b>: the replay decided exactly what the live run did</p>'
    else:
        verdict = (
            f'<p class="bad"><b>DIFFERENT</b>: {len(comparison.differences)} trip decision(s) '
            "differ</p>"
        )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ESS replay: {esc(str(result.directory))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>ESS audit replay</h1>{verdict}",
        "<table>",
        f"<tr><th>recording</th><td>{esc(str(result.directory))}</td></tr>",
        f"<tr><th>topic prefix</th><td>{esc(manifest.prefix)}</td></tr>",
        f"<tr><th>recorded at</th><td>{esc(_time(manifest.recorded_at))}</td></tr>",
        f"<tr><th>records</th><td>{result.records:,} ({result.valid:,} valid, "
        f"{result.dead_letters:,} dead-lettered)</td></tr>",
        f"<tr><th>resets applied</th><td>{len(result.resets)}</td></tr>",
        f"<tr><th>trips</th><td>{len(result.recorded)} recorded, {len(result.replayed)} "
        f"replayed, {len(result.unreplayable)} recorded outside the recording</td></tr>",
        f"<tr><th>operator actions</th><td>{len(result.operator_actions)} (not replayed, "
        "not compared)</td></tr>",
        f"<tr><th>overrides</th><td>{esc(', '.join(overrides)) or 'none (audit)'}</td></tr>",
        "</table>",
        "<h2>Trips</h2><table><tr><th>outcome</th><th>rule (reason)</th><th>subject</th>"
        "<th>epoch</th><th>recorded</th><th>replayed</th><th>note</th></tr>",
    ]
    for row in comparison.rows:
        d = row.decision
        out.append(
            f'<tr><td class="{_css_class(row.outcome)}">{esc(row.outcome.value)}</td>'
            f"<td>{esc(d.rule)}<br>({esc(d.reason.value)})</td><td>{esc(d.subject)}</td>"
            f"<td>{d.epoch}</td><td>{_cell(row.recorded)}</td><td>{_cell(row.replayed)}</td>"
            f"<td>{esc(row.note)}</td></tr>"
        )
    out.append("</table>")
    out.append(_actions_html(result.operator_actions))
    if result.dead_letter_samples:
        out.append("<h2>Dead letters (examples)</h2><table>")
        out.extend(
            f"<tr><td>{esc(s.topic)}[{s.partition}]@{s.offset}</td><td>{esc(s.error)}</td></tr>"
            for s in result.dead_letter_samples
        )
        out.append("</table>")
    out.append(_accounts_html(result, comparison, max_accounts))
    out.append("</body></html>")
    return "\n".join(out)


def _actions_html(actions: Sequence[OperatorAction]) -> str:
    esc = html.escape
    head = f'<h2>Operator actions</h2><p class="muted">{esc(ACTIONS_NOTE)}.</p>'
    if not actions:
        return head + '<p class="muted">none recorded</p>'
    out = [
        head,
        '<table class="actions"><tr><th>when</th><th>seq</th><th>who</th><th>what</th>'
        "<th>detail</th><th>outcome</th></tr>",
    ]
    for action in actions:
        css = _ACTION_CSS.get(action.kind, "muted")
        out.append(
            f"<tr><td>{esc(_time(action.at))}</td><td>{action.seq}</td>"
            f"<td>{esc(action.who)}</td><td>{esc(action.what)}</td><td>{esc(action.detail)}</td>"
            f'<td class="outcome {css}">{esc(action.outcome)}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _accounts_html(result: ReplayResult, comparison: Comparison, max_accounts: int) -> str:
    series = _equity_series(result)
    if not series:
        return '<h2>Accounts</h2><p class="muted">no PnL ticks recorded</p>'
    resets = [reset.at for reset in result.resets]
    with_trips = {d.subject for row in comparison.rows for d in (row.recorded, row.replayed) if d}
    ranked = sorted(series, key=lambda a: (a not in with_trips, -len(series[a].points), a))
    shown = ranked[:max_accounts]
    out = [
        "<h2>Accounts</h2>",
        '<p class="muted">Equity (blue) and drawdown from the running peak (red area) from '
        "the recorded PnL ticks. Trips: solid red = recorded live, dashed blue = replayed; "
        "grey dotted = reset. Hover a marker for details.</p>",
    ]
    if len(ranked) > len(shown):
        out.append(
            f'<p class="muted">{len(shown)} of {len(ranked)} accounts shown (accounts with '
            "trips first).</p>"
        )
    for account in shown:
        points = series[account].points
        markers = _markers(comparison.rows, account)
        out.append(
            f'<section class="account"><h3>{html.escape(account)}</h3>'
            f"{_svg(series[account], _drawdown(points, resets), markers, resets)}</section>"
        )
    return "\n".join(out)


def write_html_report(
    path: Path,
    result: ReplayResult,
    comparison: Comparison,
    *,
    overrides: Sequence[str] = (),
    max_accounts: int = MAX_ACCOUNTS,
) -> Path:
    """Write :func:`html_report` to ``path`` (UTF-8); returns ``path``."""
    path.write_text(
        html_report(result, comparison, overrides=overrides, max_accounts=max_accounts),
        encoding="utf-8",
    )
    return path
