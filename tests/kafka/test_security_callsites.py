"""Every Kafka client ESS builds gets the process's connection security.

A structural check over the source (``ast``): each call that builds a client, or hands a
bootstrap on to something that does, passes ``security=``. A call that forgets it connects
in PLAINTEXT, which on a SASL/TLS cluster fails only at run time; this test fails at once.
Calls that only ever talk to the embedded broker (PLAINTEXT by definition) are listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Functions and classes that build a Kafka client or pass a bootstrap on to one.
_CLIENT_BUILDERS = frozenset(
    {
        "producer",
        "consumer",
        "admin_client",
        "read_to_end",
        "KafkaStateLog",
        "follow_state",
        "send_command",
        "read_state",
        "wait_for_outcome",
        "ensure_topics",
        "kafka_target",
        "EpochFollower",
        "KafkaOutputs",
        "CommandProcessor",
        "Projector",
        "Executor",
        "run_executor",
        "fetched_highwaters",
    }
)

#: (file, enclosing function) of calls that only reach the embedded broker (PLAINTEXT):
#: ``run_broker`` serves it, and calls on ``broker.bootstrap_servers`` (the EmbeddedBroker
#: branch of ``kafka_target``) are recognized by their argument.
_EMBEDDED_ONLY = frozenset({("ess/kafka/broker.py", "run_broker")})

#: Calls whose security travels another way (positional or via a settings object).
_OTHER_ROUTE = frozenset(
    {
        ("streams/faust_compat.py", "_highwaters"),  # auth from the app's broker_credentials
    }
)


def _calls() -> list[tuple[str, str, int, ast.Call]]:
    found = []
    for package in ("ess", "streams"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "ess/kafka/clients.py" or relative.startswith(
                ("ess/examples/", "ess/chaos/")
            ):
                # The constructors themselves; demos and campaigns own their embedded broker.
                continue
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(function):
                    if not isinstance(node, ast.Call):
                        continue
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name in _CLIENT_BUILDERS:
                        found.append((relative, function.name, node.lineno, node))
    return found


def test_every_kafka_client_gets_security() -> None:
    calls = _calls()
    assert len(calls) > 20, "the scan found too few calls: is it still looking?"
    assert ("ess/roles/command/processor.py", "__init__") in {(r, f) for r, f, _, _ in calls}
    missing = sorted(
        {
            f"{relative}:{line} ({function})"
            for relative, function, line, node in calls
            if not any(keyword.arg == "security" for keyword in node.keywords)
            and (relative, function) not in _EMBEDDED_ONLY | _OTHER_ROUTE
            and not (node.args and ast.unparse(node.args[0]) == "broker.bootstrap_servers")
        }
    )
    assert not missing, "Kafka clients built without security=: " + ", ".join(missing)
