"""The ``ess`` command line.

Exit codes (every command): 0 done; 1 failed (ESS refused, the broker or Redis unreachable,
keys or venues missing or unusable); 2 usage (an unknown command or option, a malformed
``ESS_*`` value, no ``KAFKA_BOOTSTRAP_SERVERS``); 3 the command processor was fenced
(``ess worker``). An expected failure is one or two lines naming the variable or file to fix,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from aiokafka.errors import KafkaError
from pydantic import ValidationError
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
from ess.errors import EssError
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

if TYPE_CHECKING:
    from ess.rules.config import DetectionConfig

console = Console()
err_console = Console(stderr=True)
_T = TypeVar("_T")

#: Exit codes (see the module docstring).
EXIT_FAILED = 1
EXIT_USAGE = 2
#: How long a command may spend reaching the broker before it says so: an operator waiting on
#: ``ess trip`` must learn within seconds that it did not go out.
BROKER_TIMEOUT_S = 15.0


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    err_console.print(f"[red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)


def _load_settings() -> EssSettings:
    """:class:`EssSettings` from the environment; a malformed value is one line per
    variable (named as it is set: ``ESS_DETECT_TICK_INTERVAL_SEC``) and exit 2."""
    try:
        return EssSettings()
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in exc.errors()
        ]
        _fail("bad setting " + "; ".join(lines), EXIT_USAGE)
        raise  # unreachable: _fail exits


def _settings(*, quiet: bool = True) -> EssSettings:
    """The settings from the environment, with logging configured (operator commands print
    for humans: ``quiet`` keeps library logs at WARNING unless ``ESS_LOG_LEVEL`` asks for
    more or less), after a warning for each ``ESS_*`` variable no setting reads."""
    settings = _load_settings()
    if quiet:  # aiokafka's own connection errors: the command says it once, in its words
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
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


def _unreachable(bootstrap: str, exc: BaseException | str) -> str:
    """What to say when the broker cannot be reached: which variable points where."""
    why = str(exc) or type(exc).__name__
    return (
        f"cannot reach Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {why}. Is the broker "
        "running, and is this the address `ess worker` / `ess up` printed?"
    )


def _run(coro: Coroutine[Any, Any, _T], *, bootstrap: str = "") -> _T:
    """Run ``coro``; every expected failure is one line and exit 1 (a Kafka failure names
    ``KAFKA_BOOTSTRAP_SERVERS``)."""
    try:
        return asyncio.run(coro)
    except KafkaError as exc:
        _fail(_unreachable(bootstrap, exc))
    except (OperatorError, TimeoutError, SequenceError, OSError, EssError) as exc:
        _fail(str(exc) or type(exc).__name__)
    raise AssertionError("unreachable: _fail exits")


class _Commands(click.Group):
    """The ``ess`` group: an unknown command gets the closest names as a suggestion."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            typed = args[0] if args else ""
            close = difflib.get_close_matches(typed, self.list_commands(ctx), n=3, cutoff=0.5)
            if close and typed not in self.commands:
                exc.message = f"{exc.message} Did you mean {' or '.join(close)}?"
            raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
        try:
            async with asyncio.timeout(BROKER_TIMEOUT_S):
                start = await outcomes_end(bootstrap, registry, security=security) if wait else 0
                offset = await send_command(bootstrap, registry, command, security=security)
        except (KafkaError, TimeoutError) as exc:
            why = f"no answer in {BROKER_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else exc
            raise OperatorError(
                f"the trip was NOT sent: {_unreachable(bootstrap, why)} Until ESS's broker is "
                "back, stop the bots or the venues by hand"
            ) from exc
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

    sys.exit(_run(go(), bootstrap=bootstrap))


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

    sys.exit(_run(go(), bootstrap=bootstrap))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show ESS state as the state log says (the source of truth)."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    view = _run(
        read_state(bootstrap, settings.registry(), _trust(settings), security=security),
        bootstrap=bootstrap,
    )
    summary = state_summary(view.folded)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    color = "red" if summary["status"] == "ACTIVE" else "green"
    table = Table(title=f"ESS [bold {color}]{summary['status']}[/]", show_header=False)
    for name, value in summary.items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


def _print_rows(rows: list[dict[str, str]], *, as_json: bool) -> None:
    """State log rows one per line, never cut: JSON objects with ``--json``, otherwise the
    columns separated by two spaces (what a pipe or a file gets in full)."""
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo("  ".join(row.values()))


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries (Ctrl-C stops).")
@click.option("--from", "from_offset", default=0, show_default=True, help="First offset.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per entry (offset included)."
)
def log(follow: bool, from_offset: int, as_json: bool) -> None:
    """Print the state log: a table on a terminal; one line per entry when piped, with
    --json or --follow (nothing is cut to the terminal's width)."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    security = settings.kafka_security()
    registry = settings.registry()
    trust = _trust(settings)

    def rows_of(report: Any) -> list[dict[str, str]]:
        rows = [(logged.offset, entry_row(logged)) for logged in report.applied]
        rows += [(item.offset, foreign_row(item)) for item in report.foreign]
        return [
            {"offset": str(offset), **row} if as_json else row
            for offset, row in sorted(rows, key=lambda pair: pair[0])
            if offset >= from_offset
        ]

    if not follow:
        view = _run(read_state(bootstrap, registry, trust, security=security), bootstrap=bootstrap)
        rows = rows_of(view.report)
        if as_json or not console.is_terminal:
            _print_rows(rows, as_json=as_json)
            return
        table = Table("seq", "ts", "kind", "what", "command", title=f"{registry.state.name}")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
        return

    async def tail() -> None:
        reader = StateLogReader(trust, name="ess-log")
        async for records in follow_state(bootstrap, registry, security=security):
            _print_rows(rows_of(reader.feed(records)), as_json=as_json)

    with contextlib.suppress(KeyboardInterrupt):
        _run(tail(), bootstrap=bootstrap)


@cli.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["detect", "command", "execute", "project", "notify"]),
    help="Role to run (repeatable). Default: detect, command, execute, project (notify runs "
    "only when named).",
)
def worker(roles: tuple[str, ...]) -> None:
    """Run ESS (all roles, or the given ones) until SIGINT/SIGTERM.

    Without KAFKA_BOOTSTRAP_SERVERS it starts the embedded broker and prints its address.
    The execute role needs ESS_VENUES_FILE or ESS_VENUES (see README, "Executor").
    Exit code 1 when a role fails (the worker stops every role: no half-running ESS), 3 when
    the command processor was fenced (another writer appended to ess.state).
    """
    from ess.kafka.broker import BrokerError  # noqa: PLC0415 - heavy imports
    from ess.roles.worker import ROLES, WorkerError, run_worker  # noqa: PLC0415
    from ess.venues.config import VenueConfigError  # noqa: PLC0415

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
    except BrokerError as exc:  # unreachable, or the embedded broker would not start
        _fail(f"{exc} (KAFKA_BOOTSTRAP_SERVERS; unset, `ess worker` starts an embedded broker)")
    except KafkaError as exc:
        _fail(_unreachable(settings.kafka.bootstrap_servers, exc))


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
        _fail(str(exc))


@cli.command()
@click.option(
    "--venues",
    "venues_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Flatten these venues (TOML or JSON, credentials from the environment as for "
    "`ess worker`) instead of the exchange simulator.",
)
@click.option(
    "--simulator/--no-simulator",
    default=None,
    help="Start the exchange simulator with the demo account and flatten it "
    "(default: on unless --venues is given).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keys, the SQLite PolicyStore, the venues file and the log (default ESS_DATA_DIR, "
    "ess-data). Keep it to keep the keys and the last record across restarts.",
)
@click.option("--broker-port", type=int, default=None, help="Embedded broker port (default: free).")
@click.option("--sim-port", type=int, default=0, help="Simulator port (default: a free one).")
@click.option(
    "--no-dev-key",
    is_flag=True,
    help="Never generate the development operator key (nobody can reset until an operator "
    "key is installed).",
)
def up(
    *,
    venues_file: Path | None,
    simulator: bool | None,
    data_dir: Path | None,
    broker_port: int | None,
    sim_port: int,
    no_dev_key: bool,
) -> None:
    """Run all of ESS on this host, for development and trials: the embedded broker, the
    exchange simulator (or --venues), the PolicyStore (Redis at ESS_REDIS_URL when it answers,
    else SQLite in the data directory) and every role. Prints where everything is and the
    exact `ess status` / `ess trip` / `ess reset` lines. Ctrl-C stops everything.

    Not for production: the embedded broker keeps the state log in memory only (a restart
    re-establishes a stop from the PolicyStore record, reason state_log_lost).
    """
    from ess.kafka.broker import BrokerError  # noqa: PLC0415 - heavy imports
    from ess.operator.up import DEV_OPERATOR, LOG_NAME, UpError, UpPlan, run_up  # noqa: PLC0415
    from ess.roles.worker import WorkerError  # noqa: PLC0415
    from ess.venues.config import VenueConfigError  # noqa: PLC0415

    settings = _load_settings()
    data_dir = data_dir or settings.storage.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_file = (data_dir / LOG_NAME).resolve()
        sink = log_file.open("a", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot use the data directory {data_dir} (--data-dir, ESS_DATA_DIR): {exc}")
        return
    configure_logging(
        settings.observability.log_level, json=settings.observability.log_json, sink=sink
    )
    warn_environment()

    def ready(plan: UpPlan) -> None:
        for line in plan.lines():
            style = "bold yellow" if line.startswith("NOTE:") else None
            console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    try:
        asyncio.run(
            run_up(
                settings,
                data_dir=data_dir,
                venues_file=venues_file,
                simulator=simulator,
                dev_operator=None if no_dev_key else DEV_OPERATOR,
                broker_port=broker_port,
                simulator_port=sim_port,
                on_ready=ready,
                log_file=log_file,
            )
        )
    except (UpError, VenueConfigError, KeyMaterialError, BrokerError) as exc:
        _fail(str(exc))
    except WorkerError as exc:
        _fail(f"{exc} (the log: {log_file})")
    finally:
        sink.close()


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
                ),
                bootstrap=bootstrap,
            )
    except RecordingError as exc:
        _fail(str(exc))
        return
    table = Table("topic", "partitions", "records", "end offsets", title=f"recorded to {out}")
    for entry in manifest.topics:
        ends = ", ".join(f"{p}:{end}" for p, end in entry.end_offsets.items())
        table.add_row(entry.name, str(entry.partitions), f"{entry.records:,}", ends)
    console.print(table)


def _replay_config(config_path: Path | None, assignments: tuple[str, ...]) -> DetectionConfig:
    """The live detection config with the what-if ``--set`` overrides applied; a bad file or
    assignment is a usage error naming its option."""
    from ess.audit.overrides import ConfigError, apply_overrides, load_config  # noqa: PLC0415

    try:
        live = load_config(config_path)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    try:
        return apply_overrides(live, assignments)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc


def _replay_report_target(
    directory: Path, assignments: tuple[str, ...], report_path: Path | None, no_report: bool
) -> Path | None:
    """Where the HTML report goes (``None``: nowhere). Checked before the replay runs: a
    what-if may not overwrite the audit report of the same recording."""
    from ess.audit.report import ReportPathError  # noqa: PLC0415
    from ess.audit.report import report_path as choose  # noqa: PLC0415

    if no_report:
        if report_path is not None:
            raise click.UsageError("--report and --no-report exclude each other")
        return None
    try:
        return choose(directory, assignments, report_path)
    except ReportPathError as exc:
        raise click.BadParameter(str(exc), param_hint="--report") from exc


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
    help="HTML report to write (default DIR/replay-report.html; with --set "
    "DIR/replay-report-whatif-<hash of the overrides>.html: a what-if never writes the "
    "audit report).",
)
@click.option("--no-report", is_flag=True, help="Write no HTML report.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON document (format ess.replay/1, docs/audit.md) and "
    "nothing else on stdout; same exit codes.",
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
    no_report: bool,
    as_json: bool,
    tick_interval: float | None,
    workers: int | None,
) -> None:
    """Replay a recording offline through ESS detection and decisions (no broker, no
    exchange) and compare the trips with the ones the live run recorded in ess.state.

    Exit 0 when they match (always, for a what-if replay with --set), 1 when they differ,
    2 for a bad or damaged recording, config, --set or --report.
    """
    from ess.audit.compare import compare  # noqa: PLC0415 - heavy imports
    from ess.audit.export import comparison_json, dumps  # noqa: PLC0415
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
    config = _replay_config(config_path, assignments)
    target = _replay_report_target(directory, assignments, report_path, no_report)
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
    if not as_json:
        print_summary(console, result, comparison)
    if target is not None:
        try:
            write_html_report(target, result, comparison, overrides=assignments)
        except OSError as exc:
            _fail(f"cannot write the report {target}: {exc}")
        # With --json, stdout carries the document alone.
        (err_console if as_json else console).print(f"report: [bold]{target}[/]")
    if as_json:
        document = comparison_json(result, comparison, assignments, report=target)
        click.echo(dumps(document), nl=False)
    sys.exit(0 if comparison.ok else EXIT_FAILED)


def main() -> None:
    """Console-script entry point: ESS runs as a program here, so its logs are enabled (a
    library import of ``ess`` disables them). A server-only dependency missing (a plain
    ``pip install ess``, the client install) is one line, not a traceback."""
    from loguru import logger  # noqa: PLC0415 - kept inside main: the module's imports are not ours

    logger.enable("ess")
    try:
        cli()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in {"", "ess", "schemas", "streams"}:
            raise
        print(  # noqa: T201 - the one line a user without the server extra sees
            f"ess: this command needs {missing!r}, a server dependency: pip install 'ess[server]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
