"""The state-log contract on :class:`~ess.statelog.KafkaStateLog` (embedded broker, a topic
of its own per test)."""

from __future__ import annotations

import pytest

from ess.statelog import KafkaStateLog, StateLog
from schemas import TopicRegistry
from tests.statelog.contract import Opener, StateLogContract

pytestmark = pytest.mark.integration


class TestKafkaStateLog(StateLogContract):
    @pytest.fixture
    def opener(self, kafka_bootstrap: str, registry: TopicRegistry) -> Opener:
        def open_handle() -> StateLog:
            return KafkaStateLog(kafka_bootstrap, registry.state.name)

        return open_handle

    @pytest.fixture
    def scope(self, registry: TopicRegistry) -> str:
        return registry.state.name
