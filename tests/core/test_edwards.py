"""Which 32-byte strings ESS accepts as Ed25519 public keys (``ess.core.edwards``), and that
``parse_public_key`` applies the same rule to key files.

Points are computed with the module's own arithmetic (extended coordinates, RFC 8032) and
encoded here; the small-order encodings match libsodium's blocklist.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ess.core.edwards import _L, _P, _add, _decode, _multiply, public_key_problem
from ess.core.signing import (
    KeyMaterialError,
    generate_private_key,
    parse_public_key,
    public_bytes,
    public_key_text,
)

from .support import ALICE_KEY, BOB_KEY, CAROL_KEY, MALLORY_KEY

Point = tuple[int, int, int, int]

#: A point of order 8 (libsodium's blocklist entry ``26e8958f...``).
ORDER_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
IDENTITY = bytes([1]) + bytes(31)
SIGN_BIT = 1 << 255


def decoded(raw: bytes) -> Point:
    point = _decode(raw)
    assert not isinstance(point, str), point
    return point


def encode(point: Point) -> bytes:
    """RFC 8032 encoding: y little-endian, the sign of x in the top bit."""
    x, y, z, _ = point
    inverse = pow(z, -1, _P)
    x, y = x * inverse % _P, y * inverse % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def flip_sign(raw: bytes) -> bytes:
    return (int.from_bytes(raw, "little") ^ SIGN_BIT).to_bytes(32, "little")


def with_y(y: int, *, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


#: The eight points of small order: multiples of a point of order 8.
SMALL_ORDER = [encode(_multiply(k, decoded(ORDER_8))) for k in range(8)]

#: libsodium's blocklist (``ge25519_has_small_order``) with the sign bit clear; the
#: non-canonical ones (y >= p) are listed separately below.
LIBSODIUM_CANONICAL = [
    bytes(32),  # y = 0, order 4
    IDENTITY,  # y = 1, order 1
    ORDER_8,
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    with_y(_P - 1),  # ecff..7f: y = -1, order 2
]
LIBSODIUM_NON_CANONICAL = [with_y(_P), with_y(_P + 1)]  # edff..7f, eeff..7f


def test_small_order_points_when_computed_then_libsodium_encodings_and_their_sign_flips() -> None:
    # x = 0 for the identity and for (0, -1): they have one encoding each; the other six
    # come in pairs P, -P that differ only in the sign bit.
    order_2_and_1 = {IDENTITY, with_y(_P - 1)}
    paired = {raw for raw in LIBSODIUM_CANONICAL if raw not in order_2_and_1}
    expected = order_2_and_1 | paired | {flip_sign(raw) for raw in paired}

    assert len(SMALL_ORDER) == len(set(SMALL_ORDER)) == 8
    assert set(SMALL_ORDER) == expected


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=[raw.hex()[:8] for raw in SMALL_ORDER])
def test_small_order_point_when_checked_then_refused(raw: bytes) -> None:
    assert public_key_problem(raw) == "small-order point (it would verify forged signatures)"


@pytest.mark.parametrize(
    "raw", LIBSODIUM_CANONICAL, ids=["0000..00", "0100..00", "26e8958f", "c7176a70", "ecff..7f"]
)
def test_libsodium_blocklist_encoding_and_its_sign_flip_when_checked_then_refused(
    raw: bytes,
) -> None:
    flipped = flip_sign(raw)

    assert public_key_problem(raw) is not None
    assert public_key_problem(flipped) is not None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (bytes(31) + b"\x80", "small-order"),  # 0000..80: y = 0 with x odd, order 4
        (flip_sign(IDENTITY), "negative zero"),  # 0100..80: x = 0 cannot be negative
        (flip_sign(with_y(_P - 1)), "negative zero"),  # ecff..ff
    ],
    ids=["0000..80", "0100..80", "ecff..ff"],
)
def test_sign_flipped_small_order_encoding_when_checked_then_refused_for_the_right_reason(
    raw: bytes, why: str
) -> None:
    problem = public_key_problem(raw)

    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    "y",
    [_P, _P + 1, _P + 2, _P + 18, 2**255 - 1],
    ids=["p", "p+1", "p+2", "p+18", "2^255-1"],
)
@pytest.mark.parametrize("sign", [0, 1])
def test_non_canonical_y_at_or_above_p_when_checked_then_refused(y: int, sign: int) -> None:
    assert public_key_problem(with_y(y, sign=sign)) == "non-canonical encoding (y >= p)"


@pytest.mark.parametrize("raw", LIBSODIUM_NON_CANONICAL, ids=["edff..7f", "eeff..7f"])
def test_libsodium_non_canonical_small_order_encoding_when_checked_then_refused(raw: bytes) -> None:
    assert public_key_problem(raw) == "non-canonical encoding (y >= p)"


@pytest.mark.parametrize("k", range(1, 8))
def test_valid_key_plus_small_order_point_when_checked_then_refused_as_mixed_order(k: int) -> None:
    honest = decoded(public_bytes(ALICE_KEY))
    torsion = _multiply(k, decoded(ORDER_8))
    mixed = encode(_add(honest, torsion))
    assert public_key_problem(public_bytes(ALICE_KEY)) is None

    assert public_key_problem(mixed) == "not in the prime-order subgroup (mixed-order point)"


def test_mixed_order_point_when_multiplied_by_group_order_then_not_identity() -> None:
    # What the check relies on: L * (A + T) = L * T, and L is odd, so not the identity.
    mixed = _add(decoded(public_bytes(BOB_KEY)), decoded(ORDER_8))
    x, y, z, _ = _multiply(_L, mixed)

    assert (x % _P, (y - z) % _P) != (0, 0)


def test_y_not_on_curve_when_checked_then_refused() -> None:
    off_curve = next(with_y(y) for y in range(2, 100) if isinstance(_decode(with_y(y)), str))

    assert public_key_problem(off_curve) == "not a point on the curve"


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_when_checked_then_refused(length: int) -> None:
    problem = public_key_problem(bytes([9]) * length)

    assert problem == f"Ed25519 public keys are 32 bytes, got {length}"


def test_every_generated_key_when_checked_then_accepted() -> None:
    keys = [generate_private_key() for _ in range(64)]

    problems = [public_key_problem(public_bytes(key)) for key in keys]

    assert problems == [None] * len(keys)


@pytest.mark.parametrize("key", [ALICE_KEY, BOB_KEY, CAROL_KEY, MALLORY_KEY])
def test_fixed_seed_test_keys_when_checked_then_accepted(key: object) -> None:
    assert public_key_problem(public_bytes(key)) is None  # type: ignore[arg-type]


def test_identity_key_when_used_by_cryptography_then_verifies_a_forgery_for_any_message() -> None:
    # Why small-order keys must be refused when loaded: cryptography (OpenSSL) verifies the
    # signature (R = identity, S = 0) under the identity key for every message.
    forged = IDENTITY + bytes(32)
    key = Ed25519PublicKey.from_public_bytes(IDENTITY)

    for message in (b"reset", b"any other message"):
        key.verify(forged, message)  # no exception: "valid"
    assert public_key_problem(IDENTITY) is not None


# --------------------------------------------------------------------------- parse_public_key


def pem_of(raw: bytes) -> str:
    """SubjectPublicKeyInfo PEM of raw Ed25519 key bytes, whatever they are."""
    der = bytes.fromhex("302a300506032b6570032100") + raw
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n"


def test_parse_public_key_when_base64_of_identity_then_refused() -> None:
    text = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    assert base64.b64decode(text) == IDENTITY

    with pytest.raises(KeyMaterialError, match="small-order"):
        parse_public_key(text)


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=[raw.hex()[:8] for raw in SMALL_ORDER])
def test_parse_public_key_when_base64_of_small_order_point_then_refused(raw: bytes) -> None:
    with pytest.raises(KeyMaterialError, match="unusable"):
        parse_public_key(base64.b64encode(raw).decode())


def test_parse_public_key_when_pem_of_small_order_key_then_refused() -> None:
    pem = pem_of(IDENTITY)
    # cryptography itself loads it: the refusal is ESS's own check.
    assert isinstance(serialization.load_pem_public_key(pem.encode()), Ed25519PublicKey)

    with pytest.raises(KeyMaterialError, match="small-order"):
        parse_public_key(pem)


def test_parse_public_key_when_mixed_order_key_then_refused() -> None:
    mixed = encode(_add(decoded(public_bytes(ALICE_KEY)), decoded(ORDER_8)))

    with pytest.raises(KeyMaterialError, match="mixed-order"):
        parse_public_key(base64.b64encode(mixed).decode())
    with pytest.raises(KeyMaterialError, match="mixed-order"):
        parse_public_key(pem_of(mixed))


def test_parse_public_key_when_non_canonical_then_refused() -> None:
    with pytest.raises(KeyMaterialError, match="non-canonical"):
        parse_public_key(base64.b64encode(with_y(_P + 2)).decode())


def test_parse_public_key_when_generated_keys_then_accepted_in_both_forms() -> None:
    for _ in range(8):
        key = generate_private_key()
        pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

        assert parse_public_key(public_key_text(key)) == public_bytes(key)
        assert parse_public_key(pem) == public_bytes(key)
