"""The shared codec and URL redaction every adapter relies on."""

from __future__ import annotations

import pytest

from ess.policystore import CorruptPolicyValue, redact_url
from ess.policystore.base import decode_value, encode_value


def test_encode_value_when_unicode_then_compact_utf8_text_without_escapes() -> None:
    text = encode_value("k", {"detail": "café ✓", "n": 1})

    assert text == '{"detail":"café ✓","n":1}'


@pytest.mark.parametrize("raw", ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}'])
def test_decode_value_when_non_finite_number_then_raises_corrupt(raw: str) -> None:
    with pytest.raises(CorruptPolicyValue, match="non-finite"):
        decode_value("k", raw, "test store")


def test_decode_value_when_invalid_utf8_then_raises_corrupt() -> None:
    with pytest.raises(CorruptPolicyValue, match="test store: value of 'k'"):
        decode_value("k", b'{"x": "\xff"}', "test store")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://ess:s3cret@[::1]:6380/1", "rediss://ess:***@[::1]:6380/1"),
        ("redis://ess:s3cret@cache:notaport/0", "redis://***"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_url_when_password_present_then_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
