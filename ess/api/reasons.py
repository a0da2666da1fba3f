"""Turning free-text reasons into contract reason codes."""

from __future__ import annotations

from schemas import ReasonCode


def parse_reason(text: str | None, default: ReasonCode) -> tuple[ReasonCode, str]:
    """Split ``"code: detail"`` into ``(ReasonCode, detail)``.

    A bare code gives an empty detail; text that does not start with a known code keeps
    ``default`` and becomes the detail whole, so nothing a caller said is lost.
    """
    if not text:
        return default, ""
    head, sep, tail = text.partition(":")
    try:
        code = ReasonCode(head.strip())
    except ValueError:
        return default, text.strip()
    return code, tail.strip() if sep else ""
