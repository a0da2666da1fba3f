"""Is this 32-byte string a public key an honest Ed25519 signer could have? Pure arithmetic.

``cryptography`` verifies signatures against whatever point it is given. Some points make
verification meaningless: a *small-order* public key (there are eight such points, with more
non-canonical encodings of them) satisfies the verification equation for a fixed signature
over every message, so a ``.pub`` file holding one would let anybody "sign" resets. Keys from
``ess keygen`` are canonical encodings of points in the prime-order subgroup, so ESS accepts
exactly those: the encoding is canonical (``y < p``, no negative zero), the point is on the
curve, and multiplying it by the group order ``L`` gives the identity (which also excludes
every point with a small-order component).

Only used when keys are loaded (start-up), so plain Python integers are fast enough (about a
millisecond per key).
"""

from __future__ import annotations

from typing import Final

__all__ = ["public_key_problem"]

_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, -1, _P)) % _P
_L: Final = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)

# Extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
_Point = tuple[int, int, int, int]
_IDENTITY: Final[_Point] = (0, 1, 1, 0)


def _add(a: _Point, b: _Point) -> _Point:
    """Point addition on -x^2 + y^2 = 1 + d x^2 y^2 (RFC 8032, section 5.1.4)."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(scalar: int, point: _Point) -> _Point:
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % _P == 0 and (y - z) % _P == 0


def _decode(raw: bytes) -> _Point | str:
    """The point ``raw`` encodes, or why it encodes none (RFC 8032, section 5.1.3)."""
    encoded = int.from_bytes(raw, "little")
    sign = encoded >> 255
    y = encoded & ((1 << 255) - 1)
    if y >= _P:
        return "non-canonical encoding (y >= p)"
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if (v * x * x - u) % _P != 0:
        x = x * _SQRT_M1 % _P
        if (v * x * x - u) % _P != 0:
            return "not a point on the curve"
    if x == 0 and sign:
        return "non-canonical encoding (negative zero)"
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def public_key_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not an acceptable Ed25519 public key, or ``None`` when it is."""
    if len(raw) != 32:
        return f"Ed25519 public keys are 32 bytes, got {len(raw)}"
    point = _decode(raw)
    if isinstance(point, str):
        return point
    if _is_identity(_multiply(8, point)):
        return "small-order point (it would verify forged signatures)"
    if not _is_identity(_multiply(_L, point)):
        return "not in the prime-order subgroup (mixed-order point)"
    return None
