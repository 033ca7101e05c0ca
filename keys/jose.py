"""JWS and JWE compact serialisation, pinned to the federation's algorithms, registry-agnostic.

The algorithms are fixed (docs/architecture.md#security-envelope): signatures are EdDSA over Ed25519
keys (RFC 8037), named ``Ed25519`` on output (RFC 9864's fully specified name; RFC 8037's ``EdDSA``
is still accepted on input), encryption is ECDH-ES+A256KW over X25519 with A256GCM content
encryption. This module does the JOSE work with joserfc (on pyca/cryptography) and adds what a
generic library cannot know: the size limit, the exact algorithms, the explicit ``typ`` of each
kind of message (RFC 8725 §3.11), and which key a ``kid`` names, through a resolver the caller
supplies. Callers that know the registry live in ``keys.envelope``; this module never decides
whether a key is trusted.

Every failure, whatever the library raised, leaves as one ``VerificationError``.

The protected header is read before anything is trusted, so it is read as hostile input, within
``HeaderBounds``: its encoded size, how deeply it nests (measured by a scan before ``json``
recurses: a thousand nested arrays would exhaust the parser's stack) and the magnitude of its
integers (I-JSON's 2^53, so that every JOSE library reads the same number, and no integer of
thousands of digits is ever converted). ``NaN`` and ``Infinity`` are not JSON and are refused.
The members this module and its callers act on (``alg``, ``enc``, ``typ``, ``cty``, ``zip``,
``kid``) must be strings, and ``iat`` a whole number of seconds from 1970 to the end of the
last year ``schemas.fields`` holds plausible, so a caller can make it a datetime and compare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from joserfc import jwe, jws
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import OKPKey
from joserfc.registry import HeaderParameter

from keys.errors import Reason, VerificationError
from keys.jwk import SigningKey, b64url_decode, kid_of
from schemas.decode import MAX_JSON_DEPTH, json_depth
from schemas.fields import MAX_YEAR

__all__ = [
    "CONTENT_ENCRYPTION",
    "DEFAULT_BOUNDS",
    "KEY_AGREEMENT",
    "LEGACY_SIGNATURE_ALGORITHM",
    "MAX_TOKEN_BYTES",
    "SIGNATURE_ALGORITHM",
    "HeaderBounds",
    "decrypt_compact",
    "encrypt_compact",
    "read_header",
    "sign_compact",
    "verify_compact",
]

# RFC 9864 §2.2: "Ed25519", the fully specified name of EdDSA over Ed25519, is what we emit.
SIGNATURE_ALGORITHM: Final = "Ed25519"
# RFC 8037's polymorphic "EdDSA" (deprecated by RFC 9864 §4.1) is still accepted from a third party
# on an older library: both names mean the same algorithm here because every signing key in the
# registry is an Ed25519 key, so the curve EdDSA leaves open is never in doubt.
LEGACY_SIGNATURE_ALGORITHM: Final = "EdDSA"
_ACCEPTED_SIGNATURE_ALGORITHMS: Final = frozenset({SIGNATURE_ALGORITHM, LEGACY_SIGNATURE_ALGORITHM})
KEY_AGREEMENT: Final = "ECDH-ES+A256KW"
CONTENT_ENCRYPTION: Final = "A256GCM"
MAX_TOKEN_BYTES: Final = 4_194_304  # bytes: a 1 MiB referral, signed, then encrypted, fits

_JWS_SEGMENTS: Final = 3
_JWE_SEGMENTS: Final = 5
# The members acted on, which must therefore be strings (a list as alg is refused, not hashed).
_STRING_MEMBERS: Final = ("alg", "enc", "typ", "cty", "zip", "kid")
# iat: seconds from the epoch to the end of the last plausible year.
_MAX_IAT: Final = int(datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()) - 1


@dataclass(frozen=True)
class HeaderBounds:
    """How large, how deep and how wide in its integers a protected header may be.

    The broker sets them from ``Settings`` (max_jose_header_bytes, max_json_depth,
    max_json_integer); the defaults are those settings' defaults.
    """

    max_bytes: int = 4096  # bytes of the base64url-encoded protected header
    max_depth: int = MAX_JSON_DEPTH  # levels of nested arrays and objects
    max_integer: int = 2**53  # magnitude of any integer (I-JSON, RFC 7493 §2.2)


DEFAULT_BOUNDS: Final = HeaderBounds()


class _JWSRegistry(jws.JWSRegistry):
    """joserfc's JWS registry limited to our two names for Ed25519, without the RFC 9864 warning.

    We sign under "Ed25519" (RFC 9864 §2.2). joserfc warns whenever "EdDSA" is used because
    RFC 9864 §4.1 deprecates that name for leaving the curve open; we still accept it on input
    from older libraries, and Cairn only ever pairs it with an Ed25519 key, so the ambiguity
    cannot arise; a warning per such message would only be noise (and an error under the tests).
    """

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in _ACCEPTED_SIGNATURE_ALGORITHMS:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


# ``iat`` in a JWS header: the time the sender signed (RFC 7519 §5.3 replication of a claim).
_EXTRA_JWS_HEADERS: Final = {"iat": HeaderParameter("Issued At", "int")}


def _jws_registry(max_bytes: int, bounds: HeaderBounds = DEFAULT_BOUNDS) -> jws.JWSRegistry:
    registry = _JWSRegistry(
        header_registry=_EXTRA_JWS_HEADERS, algorithms=sorted(_ACCEPTED_SIGNATURE_ALGORITHMS)
    )
    # Our own limit (checked before parsing) is the binding one; joserfc's defaults (128 kB
    # payloads) would refuse a large referral with a less helpful error.
    registry.max_payload_length = max_bytes
    registry.max_header_length = bounds.max_bytes
    return registry


def _jwe_registry(max_bytes: int, bounds: HeaderBounds = DEFAULT_BOUNDS) -> jwe.JWERegistry:
    registry = jwe.JWERegistry(algorithms=[KEY_AGREEMENT, CONTENT_ENCRYPTION])
    registry.max_ciphertext_length = max_bytes
    registry.max_protected_header_length = bounds.max_bytes
    return registry


class _OutOfBounds(ValueError):
    """A number in the header that no two JOSE libraries can be trusted to read alike."""


def _integer(max_integer: int) -> Callable[[str], int]:
    digits = len(str(max_integer))

    def parse(text: str) -> int:
        # Count digits before converting: int() of thousands of digits is slow, or refused.
        if len(text.lstrip("-")) > digits or abs(value := int(text)) > max_integer:
            raise _OutOfBounds(f"an integer is outside ±{max_integer}")
        return value

    return parse


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfBounds("a number is too large to represent")
    return value


def _no_constant(name: str) -> Any:
    raise _OutOfBounds(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 lets a parser reject duplicate header names; we do, so that no two
    # parsers (ours and the library's) can read different values from one header.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate header parameter {name!r}")
        result[name] = value
    return result


def read_header(
    token: bytes | str,
    *,
    jwe_token: bool,
    max_bytes: int,
    bounds: HeaderBounds = DEFAULT_BOUNDS,
) -> dict[str, Any]:
    """The protected header of a compact JWS (or JWE), checked for shape but not trusted."""
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    if len(raw) > max_bytes:
        raise VerificationError(
            Reason.TOO_LARGE, f"the token is larger than the limit of {max_bytes} bytes"
        )
    kind, segments = ("JWE", _JWE_SEGMENTS) if jwe_token else ("JWS", _JWS_SEGMENTS)
    parts = raw.split(b".")
    if len(parts) != segments:
        raise VerificationError(
            Reason.MALFORMED, f"not a compact {kind}: expected {segments} dot-separated parts"
        )
    if len(parts[0]) > bounds.max_bytes:
        raise VerificationError(
            Reason.MALFORMED, f"the {kind} header is larger than {bounds.max_bytes} bytes"
        )
    try:
        text = b64url_decode(parts[0]).decode("utf-8")  # RFC 7515 §5.2 step 3: UTF-8 JSON
    except ValueError:  # UnicodeDecodeError is one
        raise VerificationError(
            Reason.MALFORMED, f"the {kind} header is not base64url-encoded UTF-8"
        ) from None
    if json_depth(text.encode("utf-8")) > bounds.max_depth:
        raise VerificationError(
            Reason.MALFORMED, f"the {kind} header nests deeper than {bounds.max_depth} levels"
        )
    try:
        header = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_integer(bounds.max_integer),
            parse_float=_finite,
            parse_constant=_no_constant,
        )
    except _OutOfBounds as exc:
        raise VerificationError(Reason.MALFORMED, f"the {kind} header: {exc}") from None
    except (ValueError, RecursionError):
        raise VerificationError(Reason.MALFORMED, f"the {kind} header is not JSON") from None
    if not isinstance(header, dict):
        raise VerificationError(Reason.MALFORMED, f"the {kind} header is not a JSON object")
    if "crit" in header:
        # We implement no extensions, so a critical one must not be ignored (RFC 7515 §4.1.11).
        raise VerificationError(Reason.MALFORMED, f"the {kind} names critical extensions")
    if not isinstance(header.get("kid"), str):
        raise VerificationError(Reason.MALFORMED, f"the {kind} header has no kid")
    for name in _STRING_MEMBERS:
        if name in header and not isinstance(header[name], str):
            raise VerificationError(Reason.MALFORMED, f"the {kind} header's {name} is not a string")
    if "iat" in header:
        iat = header["iat"]
        if not isinstance(iat, int) or isinstance(iat, bool) or not 0 <= iat <= _MAX_IAT:
            raise VerificationError(
                Reason.IAT_INVALID,
                f"the {kind} header's iat is not a whole number of seconds from 1970 to {MAX_YEAR}",
            )
    return header


def sign_compact(payload: bytes, key: SigningKey, *, typ: str, iat: int | None = None) -> bytes:
    """A compact JWS of ``payload``: alg ``Ed25519`` (RFC 9864), the signer's kid, the message type.

    ``iat`` (seconds since the epoch) goes into the protected header, where the signature
    covers it (RFC 7519 §5.3 lets claims be replicated as header parameters).
    """
    header: dict[str, Any] = {"alg": SIGNATURE_ALGORITHM, "kid": key.kid, "typ": typ}
    if iat is not None:
        header["iat"] = iat
    registry = _jws_registry(max(len(payload), 1))
    token = jws.serialize_compact(
        header, payload, OKPKey.import_key(key.private_key), registry=registry
    )
    return token.encode("ascii")


def verify_compact(
    token: bytes | str,
    key_for: Callable[[str], Ed25519PublicKey],
    *,
    typ: str,
    max_bytes: int = MAX_TOKEN_BYTES,
    bounds: HeaderBounds = DEFAULT_BOUNDS,
) -> bytes:
    """The payload of a compact JWS whose signature verifies under the key ``key_for(kid)``.

    ``key_for`` decides whether the kid is trusted, raising ``VerificationError`` if not.
    """
    # 1. Shape: size, three segments, a JSON header with a kid (RFC 7515 §5.2 steps 1-4).
    header = read_header(token, jwe_token=False, max_bytes=max_bytes, bounds=bounds)
    # 2. The algorithm is ours; "none" and every other one is refused before any key is used.
    alg = header.get("alg")
    if alg == "none" or _signature_empty(token):
        raise VerificationError(Reason.UNSIGNED, "the token carries no signature")
    if alg not in _ACCEPTED_SIGNATURE_ALGORITHMS:
        raise VerificationError(
            Reason.ALGORITHM, f"signature algorithm {alg!r} is not allowed; use Ed25519 (or EdDSA)"
        )
    # 3. Explicit typing (RFC 8725 §3.11): a token of one kind never passes as another.
    if header.get("typ") != typ:
        raise VerificationError(
            Reason.WRONG_TYPE, f"expected a token of type {typ!r}, got {header.get('typ')!r}"
        )
    # 4. The key the kid names, if the caller trusts it.
    public_key = key_for(header["kid"])
    # 5. The signature (RFC 7515 §5.2 step 8).
    try:
        verified = jws.deserialize_compact(
            token, OKPKey.import_key(public_key), registry=_jws_registry(max_bytes, bounds)
        )
    except BadSignatureError:
        raise VerificationError(Reason.BAD_SIGNATURE, "the signature does not verify") from None
    except (JoseError, ValueError, TypeError, KeyError, InvalidSignature) as exc:
        raise VerificationError(
            Reason.MALFORMED, f"the JWS could not be verified ({type(exc).__name__})"
        ) from None
    return verified.payload


def _signature_empty(token: bytes | str) -> bool:
    """True if a compact JWS has an empty signature segment (an unsecured JWS)."""
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    return raw.rsplit(b".", 1)[-1] == b""


def encrypt_compact(
    plaintext: bytes, public_key: X25519PublicKey, *, cty: str | None = "JOSE"
) -> bytes:
    """A compact JWE of ``plaintext`` to one X25519 key: ECDH-ES+A256KW, A256GCM, its kid.

    ``cty`` "JOSE" says the plaintext is itself a compact JOSE object (RFC 7515 §4.1.10).
    """
    header: dict[str, Any] = {
        "alg": KEY_AGREEMENT,
        "enc": CONTENT_ENCRYPTION,
        "kid": kid_of(public_key),
    }
    if cty is not None:
        header["cty"] = cty
    registry = _jwe_registry(max(len(plaintext), 1))
    token = jwe.encrypt_compact(header, plaintext, OKPKey.import_key(public_key), registry=registry)
    return token.encode("ascii")


def decrypt_compact(
    token: bytes | str,
    key_for: Callable[[str], X25519PrivateKey],
    *,
    max_bytes: int = MAX_TOKEN_BYTES,
    bounds: HeaderBounds = DEFAULT_BOUNDS,
) -> bytes:
    """The plaintext of a compact JWE, decrypted with the private key ``key_for(kid)``.

    ``key_for`` raises ``VerificationError`` if the kid is not a key the caller may use.
    """
    # 1. Shape: size, five segments, a JSON header with a kid (RFC 7516 §5.2 steps 1-3).
    header = read_header(token, jwe_token=True, max_bytes=max_bytes, bounds=bounds)
    # 2. The algorithms are ours: no RSA, no direct keys, no compression (RFC 7516 §4.1.3).
    if header.get("alg") != KEY_AGREEMENT or header.get("enc") != CONTENT_ENCRYPTION:
        raise VerificationError(
            Reason.ALGORITHM,
            f"JWE algorithms {header.get('alg')!r}/{header.get('enc')!r} are not allowed; "
            f"use {KEY_AGREEMENT} with {CONTENT_ENCRYPTION}",
        )
    if "zip" in header:
        raise VerificationError(Reason.ALGORITHM, "compressed JWEs are not accepted")
    # 3. Our private key for the kid, if it is one we may still use.
    private_key = key_for(header["kid"])
    # 4. Key agreement, key unwrap, authenticated decryption (RFC 7516 §5.2 steps 6-16).
    try:
        opened = jwe.decrypt_compact(
            token, OKPKey.import_key(private_key), registry=_jwe_registry(max_bytes, bounds)
        )
    except (JoseError, ValueError, TypeError, KeyError, InvalidTag) as exc:
        raise VerificationError(
            Reason.DECRYPTION_FAILED,
            f"the JWE does not decrypt: tampered, truncated or not for this key "
            f"({type(exc).__name__})",
        ) from None
    if opened.plaintext is None:
        raise VerificationError(Reason.DECRYPTION_FAILED, "the JWE has no plaintext")
    return opened.plaintext
