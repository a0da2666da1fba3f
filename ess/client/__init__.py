"""The client a trading service embeds: report to ESS, and ask ESS whether to trade.

One package for a bot, installed with the plain ``pip install ess`` (no Faust, ccxt, broker
binary or web server; those are ``ess[server]``):

* :class:`AsyncEssPublisher` (asyncio) and :class:`EssPublisher` (blocking): one method per
  ESS input topic (``fill``, ``pnl_tick``, ``order_submitted``, ``order_error``,
  ``health_beat``, ``latency_sample``, ``market_tick``, ``security_event``), each validating
  the record, keying it by its topic's key field and deriving a replay-stable ``event_id``
  when none is given; batched, ``acks="all"``, bounded in time;
* :class:`Heartbeat` / :class:`SyncHeartbeat`: beats every few seconds, announces planned
  maintenance and retirement so that a bot stopped on purpose is not taken for a lost one;
* the trading gate (:class:`TradingGate`, :func:`gate_feed`, ...) re-exported from
  :mod:`ess.gate`, and :func:`connect_gate` to open one on the PolicyStore's URL.

``docs/connect-your-bot.md`` shows the whole of it in ten lines.
"""

from ess.client.errors import BrokerUnreachable, PublishError
from ess.client.gating import connect_gate
from ess.client.heartbeat import Heartbeat
from ess.client.publisher import AsyncEssPublisher
from ess.client.records import (
    InputTopics,
    OutgoingRecord,
    build_record,
    canonical_content,
    derive_event_id,
)
from ess.client.sync import EssPublisher, SyncHeartbeat
from ess.gate import (
    GateState,
    GateStatus,
    PolicyStoreGateFeed,
    RedisGateFeed,
    TradingGate,
    gate_feed,
)
from ess.kafka.clients import KafkaSecurity
from ess.policystore import policy_store_from_url
from schemas import ComponentLifecycle, HealthStatus, RecordError

__all__ = [
    "AsyncEssPublisher",
    "BrokerUnreachable",
    "ComponentLifecycle",
    "EssPublisher",
    "GateState",
    "GateStatus",
    "HealthStatus",
    "Heartbeat",
    "InputTopics",
    "KafkaSecurity",
    "OutgoingRecord",
    "PolicyStoreGateFeed",
    "PublishError",
    "RecordError",
    "RedisGateFeed",
    "SyncHeartbeat",
    "TradingGate",
    "build_record",
    "canonical_content",
    "connect_gate",
    "derive_event_id",
    "gate_feed",
    "policy_store_from_url",
]
