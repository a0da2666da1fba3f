"""Kafka plumbing: client factories and connection security (:mod:`ess.kafka.clients`), the
embedded broker and topic setup (:mod:`ess.kafka.broker`), the dead-letter writer."""
