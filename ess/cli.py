"""The ``ess`` command line. Exit codes: 0 success, 1 operation failed, 2 usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ess.config import EssSettings
from ess.core.signing import (
    KeyMaterialError,
    generate_private_key,
    public_key_text,
    write_key_pair,
)
from ess.logging import configure_logging

console = Console()
err_console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ess")
def cli() -> None:
    """ESS: the Emergency Stop System for automated trading."""


@cli.command()
@click.option("--name", required=True, help="Operator name; files are <name>.key/<name>.pub.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("keys"),
    show_default=True,
    help="Where to write the key pair.",
)
def keygen(name: str, directory: Path) -> None:
    """Write an Ed25519 key pair for an operator who may sign resets.

    Keep <name>.key secret (it is written with mode 0600); install <name>.pub in every
    command processor's ESS_OPERATOR_KEYS_DIR.
    """
    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.BadParameter("use letters, digits, '-' and '_' only", param_hint="--name")
    key = generate_private_key()
    try:
        paths = write_key_pair(key, directory, name)
    except KeyMaterialError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    console.print(f"private key: [bold]{paths.private}[/] (keep secret, mode 0600)")
    console.print(f"public key:  [bold]{paths.public}[/]")
    console.print(f"public key (base64): {public_key_text(key)}")


@cli.command()
@click.option("--port", type=int, default=None, help="Loopback port (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) with every ESS topic created.

    For development and tests only: it keeps everything in memory. Blocks until Ctrl-C.
    """
    from ess.broker import BrokerError, run_broker  # noqa: PLC0415 - keeps `ess --help` fast

    settings = EssSettings()
    configure_logging(settings.log_level, json=settings.log_json)
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


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
