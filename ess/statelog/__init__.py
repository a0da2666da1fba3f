"""The state log ``ess.state``: append-only, one partition, one writer, read by everyone.

Storage is a port, :class:`StateLog` (raw bytes in, raw records out), with two adapters: the
Kafka topic (:class:`KafkaStateLog`) and a list (:class:`InMemoryStateLog`). Reading is one
class, :class:`StateLogReader`, that every reader uses: it verifies each record's seal and
chain and folds only authentic entries (:mod:`ess.core.reader` has the rules), and logs what
it refused. A reader never decodes a state-log record any other way.

A record that does not verify is *foreign*: never applied, logged CRITICAL, and it leaves
the reader untrusted until the command processor acknowledges it with a trip
(:attr:`StateLogReader.trusted`). A ``seq`` gap or a reset whose authorization does not
verify raises :class:`~ess.core.reader.LogBroken`: the reader must fail closed.
"""

from ess.core.reader import (
    Folded,
    ForeignRecord,
    LogBroken,
    LoggedEntry,
    RawRecord,
    Trust,
    fold_log,
)
from ess.statelog.base import StateLog, StateLogReader
from ess.statelog.kafka import STATE_KEY, KafkaStateLog, follow_state
from ess.statelog.memory import InMemoryStateLog

__all__ = [
    "STATE_KEY",
    "Folded",
    "ForeignRecord",
    "InMemoryStateLog",
    "KafkaStateLog",
    "LogBroken",
    "LoggedEntry",
    "RawRecord",
    "StateLog",
    "StateLogReader",
    "Trust",
    "fold_log",
    "follow_state",
]
