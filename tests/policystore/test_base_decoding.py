"""What the PolicyStore adapters accept as a stored value: one UTF-8 JSON object, nothing a
parser in another language could read differently (issue 16: the gate protocol)."""

from __future__ import annotations

import pytest

from ess.policystore.base import CorruptPolicyValue, decode_value


def test_a_plain_object_decodes() -> None:
    assert decode_value("k", b'{"active": false, "seq": 3}', "test") == {"active": False, "seq": 3}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"active": true, "active": false}',  # which one counts depends on the parser
        '{"active": true, "active": false}',
        b'\xef\xbb\xbf{"active": false}',  # a UTF-8 byte-order mark
        '{"active": false}'.encode("utf-16"),
        b'{"seq": NaN}',
        b"[]",
    ],
)
def test_anything_another_parser_could_read_differently_is_corrupt(raw: str | bytes) -> None:
    with pytest.raises(CorruptPolicyValue):
        decode_value("emergency_stop", raw, "test")
