"""loguru set-up: JSON lines with secrets redacted.

Redaction happens in a patcher, i.e. before any sink sees the record, so no sink (file, stderr,
a future log shipper) can leak what the patcher removed. Two nets: extra fields whose *name*
looks secret are masked, and message/extra *text* is scrubbed of PEM private keys and
``secret=...``-style pairs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

MASK = "***"
_SECRET_NAME = re.compile(
    r"(secret|passw(or)?d|passphrase|api_?key|apikey|private|token|credential|signature|"
    r"auth)",
    re.IGNORECASE,
)
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)
_SECRET_PAIR = re.compile(
    # The key starts at a word boundary (lookbehind): without it the engine retries the
    # unbounded [\w.-]* run from every position of a long word, quadratic in its length.
    r"(?P<key>(?<![\w.-])[\w.-]*(?:secret|passw(?:or)?d|passphrase|api_?key|apikey|token|signature)"
    r"[\w.-]*)(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',&}]+)",
    re.IGNORECASE,
)


#: ``scheme://user:password@host``: the password of a URL's userinfo (Redis, Kafka, proxies).
_URL_PASSWORD = re.compile(r"(?P<head>(?<![\w+.-])[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@/]+(?P<at>@)")
#: URL query parameters that carry credentials under short names (``?key=``, ``&sig=``...).
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:key|sig|auth|session|access|code|x-mbx-apikey)[\w.-]*=)[^&\s\"'#]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with PEM private keys, ``secret=value`` pairs, URL passwords and
    credential-looking URL query parameters masked."""
    text = _PEM_PRIVATE.sub(f"-----PRIVATE KEY {MASK}-----", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def redact_value(name: str, value: Any) -> Any:
    """Mask a value whose field name looks secret; scrub text values; recurse into dicts."""
    if _SECRET_NAME.search(name):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(name, v) for v in value]
    return value


def _patch(record: Record) -> None:
    record["message"] = redact_text(record["message"])
    extra = record["extra"]
    for key in list(extra):
        extra[key] = redact_value(key, extra[key])
    if record["exception"] is not None:
        # Tracebacks can carry secrets in their messages; keep type, scrub the text.
        exc_type, exc_value, tb = record["exception"]
        if exc_value is not None and _PEM_PRIVATE.search(str(exc_value)):
            record["exception"] = type(record["exception"])(exc_type, None, tb)


def _json_line(record: Record) -> str:
    """One compact JSON object: time, level, message, origin, then the bound fields."""
    payload: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "msg": record["message"],
        "logger": record["name"],
        "fn": record["function"],
        "line": record["line"],
    }
    payload.update(record["extra"])
    if record["exception"] is not None:
        exc_type, exc_value, _ = record["exception"]
        name = exc_type.__name__ if exc_type else "Exception"
        payload["exception"] = redact_text(f"{name}: {exc_value}")
    try:
        return orjson.dumps(payload, default=str).decode()
    except TypeError:
        # Text that is not valid UTF-8 (lone surrogates, from hostile input) cannot be
        # encoded as is; escaped, the line is still written rather than lost.
        return orjson.dumps(_utf8_safe(payload)).decode()


def _utf8_safe(value: Any) -> Any:
    """``value`` with every string's lone surrogates escaped (``\\ud800``), anything JSON
    has no type for turned into its text first."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(str(key)): _utf8_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8_safe(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _utf8_safe(str(value))


def _json_sink(target: TextIO) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        target.write(_json_line(message.record) + "\n")
        target.flush()

    return write


def configure_logging(
    level: str = "INFO", *, json: bool = True, sink: TextIO | None = None
) -> None:
    """Replace loguru's handlers with one redacting sink (stderr by default).

    ``json=True`` writes one compact JSON object per line for log shippers;
    ``json=False`` is a compact human format for terminals and demos. Configuring logging is
    what a program running ESS does, so ESS's own logs are switched on here (importing ``ess``
    as a library leaves them off: see ``ess/__init__.py``).
    """
    logger.enable("ess")
    logger.remove()
    logger.configure(patcher=_patch)
    target = sink or sys.stderr
    if json:
        logger.add(_json_sink(target), level=level.upper(), backtrace=False, diagnose=False)
    else:
        logger.add(
            target,
            level=level.upper(),
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
            "{message} <dim>{extra}</dim>",
            backtrace=False,
            diagnose=False,
        )
