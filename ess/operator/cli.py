"""The ``ess`` command line. Exit codes: 0 success, 1 operation failed, 2 usage error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from ess.clock import SystemClock
from ess.core import SequenceError
from ess.core.attestation import key_id
from ess.core.reader import Trust
from ess.core.signing import (
    KeyMaterialError,
    generate_private_key,
    public_bytes,
    public_key_text,
    write_key_pair,
)
from ess.observability.logging import configure_logging
from ess.operator.commands import (
    OperatorError,
    entry_row,
    foreign_row,
    manual_trip,
    outcomes_end,
    read_state,
    send_command,
    signed_reset,
    state_summary,
    wait_for_outcome,
)
from ess.settings import EssSettings, warn_environment
from ess.statelog import StateLogReader, follow_state
from schemas import CommandOutcome

console = Console()
err_console = Console(stderr=True)
_T = TypeVar("_T")

#: Exit codes: 0 done, 1 failed (ESS or broker said no / unreachable), 2 usage error.
EXIT_FAILED = 1


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {message}")
    sys.exit(EXIT_FAILED)


def _settings(*, quiet: bool = True) -> EssSettings:
    """The settings from the environment, with logging configured (operator commands print
    for humans: ``quiet`` keeps library logs at WARNING unless ``ESS_LOG_LEVEL`` asks for
    more or less), after a warning for each ``ESS_*`` variable no setting reads."""
    settings = EssSettings()
    level = settings.observability.log_level
    configure_logging(
        "WARNING" if quiet and level == "INFO" else level, json=settings.observability.log_json
    )
    warn_environment()
    return settings


def _bootstrap(settings: EssSettings) -> str:
    if not settings.kafka.bootstrap_servers:
        raise click.UsageError(
            "set KAFKA_BOOTSTRAP_SERVERS to the cluster ESS runs on "
            "(`ess worker` and `ess broker` print it when they start the embedded broker)"
        )
    return settings.kafka.bootstrap_servers


def _trust(settings: EssSettings) -> Trust:
    try:
        return settings.state_trust()
    except KeyMaterialError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        return asyncio.run(coro)
    except (OperatorError, TimeoutError, SequenceError, OSError) as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ess")
def cli() -> None:
    """ESS: the Emergency Stop System for automated trading."""


@cli.command()
@click.option("--name", default=None, help="Operator name; files are <name>.key/<name>.pub.")
@click.option(
    "--processor",
    is_flag=True,
    help="Write the command processor's signing key instead: <dir>/processor.key and "
    "<dir>/processors/<key id>.pub.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("keys"),
    show_default=True,
    help="Where to write the key pair.",
)
def keygen(name: str | None, processor: bool, directory: Path) -> None:
    """Write an Ed25519 key pair for an operator who may sign resets, or (--processor) for
    the command processor, which signs every ess.state entry.

    Keep the .key secret (it is written with mode 0600). An operator's <name>.pub goes into
    ESS_OPERATOR_KEYS_DIR of every ESS process; the processor's .pub into every process's
    ESS_PROCESSOR_KEYS_DIR (keep old ones there after a rotation: old entries stay signed by
    them).
    """
    if processor == (name is not None):
        raise click.UsageError("give either --name NAME (an operator) or --processor")
    key = generate_private_key()
    try:
        if processor:
            paths = write_key_pair(key, directory, "processor")
            trusted = directory / "processors"
            trusted.mkdir(parents=True, exist_ok=True)
            public = trusted / f"{key_id(public_bytes(key))}.pub"
            paths.public.replace(public)
        else:
            assert name is not None
            if not name.replace("-", "").replace("_", "").isalnum():
                raise click.BadParameter(
                    "use letters, digits, '-' and '_' only", param_hint="--name"
                )
            paths = write_key_pair(key, directory, name)
            public = paths.public
    except KeyMaterialError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    console.print(f"private key: [bold]{paths.private}[/] (keep secret, mode 0600)")
    console.print(f"public key:  [bold]{public}[/]")
    if processor:
        console.print(f"key id: {key_id(public_bytes(key))}")
    console.print(f"public key (base64): {public_key_text(key)}")


@cli.command()
@click.option("--detail", required=True, help="Why you are stopping trading (recorded).")
@click.option("--operator", default=None, help="Your name (default: the OS user).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the command processor recorded the trip.",
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def trip(detail: str, operator: str | None, wait: bool, timeout: float) -> None:
    """Stop trading now (reason `manual`). Needs no key: stopping is always allowed."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    registry = settings.registry()
    trust = _trust(settings) if wait else None
    command = manual_trip(SystemClock(), detail, operator)

    async def go() -> int:
        start = await outcomes_end(bootstrap, registry, security=security) if wait else 0
        offset = await send_command(bootstrap, registry, command, security=security)
        console.print(f"trip sent: command [bold]{command.command_id}[/] (offset {offset})")
        if trust is None:
            return 0
        outcome = await wait_for_outcome(
            bootstrap,
            registry,
            command.command_id,
            trust=trust,
            timeout=timeout,
            from_offset=start,
            security=security,
        )
        return _print_trip_outcome(outcome)

    sys.exit(_run(go()))


def _print_trip_outcome(outcome: CommandOutcome) -> int:
    if outcome.outcome.value == "applied":
        label = "ESS ACTIVE" if outcome.entry_kind == "activated" else "recorded (already ACTIVE)"
        console.print(f"[bold red]{label}[/] at seq {outcome.seq}")
        return 0
    if outcome.outcome.value == "duplicate":
        console.print(f"[yellow]already applied[/]: {outcome.detail}")
        return 0
    err_console.print(f"[red]trip not applied[/]: {outcome.detail}")
    return EXIT_FAILED


@cli.command()
@click.option("--operator", required=True, help="Operator name registered with ESS.")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The operator's private key file (from `ess keygen`).",
)
@click.option("--detail", required=True, help="Why it is safe to trade again (recorded).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for the command processor's verdict.",
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def reset(operator: str, key_path: Path, detail: str, wait: bool, timeout: float) -> None:
    """Re-enable trading with a signed reset. Exit 0 when reset (or approval recorded
    towards a quorum), 1 when ESS rejected it."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    registry = settings.registry()
    trust = _trust(settings)

    async def go() -> int:
        # A reset is signed for the activation it clears: read which one that is first.
        view = await read_state(bootstrap, registry, trust, security=security)
        activation = view.folded.state.activation
        if activation is None:
            err_console.print("[red]ESS is not ACTIVE[/]: nothing to reset")
            return EXIT_FAILED
        if not view.folded.trusted:
            err_console.print(
                "[yellow]warning:[/] the state log holds a foreign record the command processor "
                "has not acknowledged yet; the reset may be for an activation still to come"
            )
        try:
            command = signed_reset(SystemClock(), operator, key_path, detail, activation=activation)
        except KeyMaterialError as exc:
            raise OperatorError(str(exc)) from exc
        console.print(
            f"resetting activation seq {activation.seq} ({activation.reason.value}: "
            f"{activation.detail})"
        )
        start = await outcomes_end(bootstrap, registry, security=security)
        offset = await send_command(bootstrap, registry, command, security=security)
        console.print(f"reset sent: command [bold]{command.command_id}[/] (offset {offset})")
        if not wait:
            return 0
        outcome = await wait_for_outcome(
            bootstrap,
            registry,
            command.command_id,
            trust=trust,
            timeout=timeout,
            from_offset=start,
            security=security,
        )
        if outcome.entry_kind == "reset":
            console.print(f"[bold green]ESS RESET[/] at seq {outcome.seq}: trading may resume")
            return 0
        if outcome.entry_kind == "reset_approval":
            console.print(
                f"[yellow]approval recorded[/] ({outcome.detail}): ESS stays ACTIVE until the "
                "quorum is met"
            )
            return 0
        err_console.print(f"[red]reset REJECTED[/]: {outcome.detail}")
        return EXIT_FAILED

    sys.exit(_run(go()))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show ESS state as the state log says (the source of truth)."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    view = _run(read_state(bootstrap, settings.registry(), _trust(settings), security=security))
    summary = state_summary(view.folded)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    color = "red" if summary["status"] == "ACTIVE" else "green"
    table = Table(title=f"ESS [bold {color}]{summary['status']}[/]", show_header=False)
    for name, value in summary.items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries (Ctrl-C stops).")
@click.option("--from", "from_offset", default=0, show_default=True, help="First offset.")
def log(follow: bool, from_offset: int) -> None:
    """Print the state log."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    registry = settings.registry()
    trust = _trust(settings)
    columns = ("seq", "ts", "kind", "what", "command")
    if not follow:
        view = _run(read_state(bootstrap, registry, trust, security=security))
        rows = [(logged.offset, entry_row(logged)) for logged in view.entries]
        rows += [(item.offset, foreign_row(item)) for item in view.report.foreign]
        table = Table(*columns, title=f"{registry.state.name}")
        for offset, row in sorted(rows, key=lambda pair: pair[0]):
            if offset >= from_offset:
                table.add_row(*row.values())
        console.print(table)
        return

    async def tail() -> None:
        reader = StateLogReader(trust, name="ess-log")
        async for records in follow_state(bootstrap, registry, security=security):
            report = reader.feed(records)
            rows = [(logged.offset, entry_row(logged)) for logged in report.applied]
            rows += [(item.offset, foreign_row(item)) for item in report.foreign]
            for offset, row in sorted(rows, key=lambda pair: pair[0]):
                if offset >= from_offset:
                    console.print("  ".join(row.values()))

    with contextlib.suppress(KeyboardInterrupt):
        _run(tail())


@cli.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["detect", "command", "execute", "project"]),
    help="Role to run (repeatable). Default: all roles.",
)
def worker(roles: tuple[str, ...]) -> None:
    """Run ESS (all roles, or the given ones) until SIGINT/SIGTERM.

    Without KAFKA_BOOTSTRAP_SERVERS it starts the embedded broker and prints its address.
    The execute role needs ESS_VENUES_FILE or ESS_VENUES (see README, "Executor").
    Exit code 1 when a role fails (the worker stops every role: no half-running ESS), 3 when
    the command processor was fenced (another writer appended to ess.state).
    """
    from ess.roles.worker import ROLES, WorkerError, run_worker  # noqa: PLC0415
    from ess.venues.config import VenueConfigError  # noqa: PLC0415 - heavy imports

    settings = _settings(quiet=False)
    try:
        asyncio.run(
            run_worker(
                settings,
                roles or tuple(ROLES),
                on_ready=lambda bootstrap: err_console.print(
                    f"ESS worker ready: KAFKA_BOOTSTRAP_SERVERS={bootstrap}"
                ),
            )
        )
    except (WorkerError, VenueConfigError, KeyMaterialError) as exc:
        from ess.roles.command.processor import EXIT_FENCED, FencedError  # noqa: PLC0415

        if isinstance(exc.__cause__, FencedError):
            # Like `python -m ess.roles.command.processor`: another writer exists; do not restart
            # blindly.
            err_console.print(f"[red]error:[/] {exc}")
            sys.exit(EXIT_FENCED)
        _fail(str(exc))


@cli.command()
@click.option("--port", type=int, default=None, help="Loopback port (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) with every ESS topic created.

    For development and tests only: it keeps everything in memory. Blocks until Ctrl-C.
    """
    from ess.kafka.broker import BrokerError, run_broker  # noqa: PLC0415 - keeps `ess --help` fast

    settings = _settings(quiet=False)
    try:
        run_broker(
            port,
            settings.registry(),
            on_ready=lambda bootstrap: console.print(
                f"broker ready: [bold]KAFKA_BOOTSTRAP_SERVERS={bootstrap}[/] (Ctrl-C to stop)"
            ),
        )
    except BrokerError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)


# --------------------------------------------------------------------------- audit


@cli.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New directory for the recording (created; must not hold one already).",
)
@click.option(
    "--topics",
    "topics",
    multiple=True,
    help="Topics to record, comma-separated or repeated (fills, order-errors or ess.fills); "
    "default every input topic. The state log is always recorded.",
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds allowed per topic.")
def record(out: Path, topics: tuple[str, ...], timeout: float) -> None:
    """Copy the input topics and the state log, from their beginning to their current end,
    into files in a directory that `ess replay` reads (format: ess/audit/recording.py)."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415 - heavy imports
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    from ess.audit.recording import RecordingError  # noqa: PLC0415
    from ess.audit.recording import record as record_topics  # noqa: PLC0415

    settings = _settings()
    bootstrap = _bootstrap(settings)
    registry = settings.registry()
    names = [name for text in topics for name in text.split(",") if name.strip()]
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console
    )
    tasks: dict[str, Any] = {}

    def on_progress(topic: str, done: int, total: int) -> None:
        if topic not in tasks:
            tasks[topic] = progress.add_task(topic, total=total)
        progress.update(tasks[topic], completed=done, total=total)

    try:
        with progress:
            manifest = _run(
                record_topics(
                    bootstrap,
                    registry,
                    out,
                    topics=names or None,
                    security=settings.kafka_security(),
                    on_progress=on_progress,
                    timeout=timeout,
                )
            )
    except RecordingError as exc:
        _fail(str(exc))
        return
    except KafkaError as exc:
        _fail(f"Kafka at {bootstrap}: {exc}")
        return
    table = Table("topic", "partitions", "records", "end offsets", title=f"recorded to {out}")
    for entry in manifest.topics:
        ends = ", ".join(f"{p}:{end}" for p, end in entry.end_offsets.items())
        table.add_row(entry.name, str(entry.partitions), f"{entry.records:,}", ends)
    console.print(table)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="DetectionConfig file (TOML or JSON) the live detectors ran with; default "
    "ESS_DETECT_CONFIG, else the built-in defaults.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="PATH=VALUE",
    help="What-if: override a threshold (repeatable), e.g. account.daily_loss=0.07, "
    "heartbeat_timeout_sec=30, account_overrides.acct-7.stop_loss_max=3. The comparison "
    "then shows how trips moved instead of failing.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML report to write (default DIR/replay-report.html).",
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Seconds between silence-rule ticks, as the live worker's "
    "ESS_DETECT_TICK_INTERVAL_SEC (default: that variable, else 1).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes to replay topics in (default: one per CPU for large recordings).",
)
def replay(
    directory: Path,
    *,
    config_path: Path | None,
    assignments: tuple[str, ...],
    report_path: Path | None,
    tick_interval: float | None,
    workers: int | None,
) -> None:
    """Replay a recording offline through ESS detection and decisions (no broker, no
    exchange) and compare the trips with the ones the live run recorded in ess.state.

    Exit 0 when they match (always, for a what-if replay with --set), 1 when they differ,
    2 for a bad or damaged recording, config or --set.
    """
    from ess.audit.compare import compare  # noqa: PLC0415 - heavy imports
    from ess.audit.overrides import ConfigError, apply_overrides, load_config  # noqa: PLC0415
    from ess.audit.recording import RecordingError, load_manifest  # noqa: PLC0415
    from ess.audit.replay import DEFAULT_TICK_INTERVAL  # noqa: PLC0415
    from ess.audit.replay import replay as run_replay  # noqa: PLC0415
    from ess.audit.report import print_summary, write_html_report  # noqa: PLC0415

    configure_logging("WARNING", json=False)
    warn_environment()
    try:
        load_manifest(directory)
    except RecordingError as exc:
        raise click.BadParameter(str(exc), param_hint="DIR") from exc
    try:
        live = load_config(config_path)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    try:
        config = apply_overrides(live, assignments)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc
    if tick_interval is None:
        try:
            tick_interval = EssSettings().detect.tick_interval_sec
        except ValueError:
            tick_interval = DEFAULT_TICK_INTERVAL
    try:
        trust = EssSettings().state_trust()
    except (KeyMaterialError, ValueError) as exc:
        raise click.UsageError(f"cannot verify the recorded state log: {exc}") from exc
    try:
        result = run_replay(
            directory, config, trust=trust, tick_interval=tick_interval, workers=workers
        )
    except RecordingError as exc:  # a damaged file or state log: bad input, not a verdict
        raise click.BadParameter(str(exc), param_hint="DIR") from exc
    what_if = bool(assignments)
    comparison = compare(
        result.recorded, result.replayed, what_if=what_if, unreplayable=result.unreplayable
    )
    print_summary(console, result, comparison)
    target = report_path or directory / "replay-report.html"
    try:
        write_html_report(target, result, comparison, overrides=assignments)
    except OSError as exc:
        _fail(f"cannot write the report {target}: {exc}")
    console.print(f"report: [bold]{target}[/]")
    sys.exit(0 if comparison.ok else EXIT_FAILED)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
