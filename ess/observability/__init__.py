"""Observability shared by every role: structured logging, the HTTP status server, and the
metric types every role's own metrics module builds on."""
