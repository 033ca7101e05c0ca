"""The registry's public keys as a JWK Set (RFC 7517 §5), for any JOSE library.

A third party that holds a verified registry (``keys.registry.verify_registry``) can hand this
document to its JOSE library and look up the key a token's ``kid`` names, without reading our
code. Pure: a ``Registry`` in, a JSON-ready dict out; it never decides whether a key is trusted
at a given moment (that stays with ``keys.envelope``, which also applies the retired-key grace
period): it lists what the registry says, so a reader must still honour the extra members below.

Each key is an OKP JWK (RFC 8037 §2: ``kty``, ``crv``, ``x``) with ``kid`` (its RFC 7638
thumbprint), ``use`` (RFC 7517 §4.2: ``sig`` for Ed25519, ``enc`` for X25519) and ``alg`` (RFC 7517
§4.4: ``Ed25519`` per RFC 9864 §2.2 for signing keys, ``ECDH-ES+A256KW`` for encryption keys).
RFC 7517 §4 allows further members, which JOSE libraries ignore; we add, under names prefixed
``cairn_`` so that none can collide with a registered JWK parameter:

- ``cairn_member``: the id of the member (agency, broker or auditor) that holds the key;
- ``cairn_role``: that member's role;
- ``cairn_status``: ``active`` or ``retired`` (a retired key still verifies and opens for the
  registry's grace period, then never);
- ``cairn_not_before`` / ``cairn_not_after``: the key's validity window, RFC 3339 UTC;
- ``cairn_retired_at``: when a retired key was retired (only on retired keys);
- ``cairn_vkey``: the key as the registry lists it in C2SP signed-note verifier-key form: a
  witness's cosignature/v1 key, with the name its cosignatures carry, or the auditor's
  checkpoint key, named by the log's origin (only on those keys).

Revoked keys are left out: nothing signed or sealed under one may be accepted, so a JWK Set
that lists it could only mislead. The Set as a whole carries ``cairn_federation`` and
``cairn_registry_serial`` (RFC 7517 §5 allows additional members there too), naming the signed
registry it was made from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from keys.registry import KeyStatus, Registry

__all__ = ["EXTRA_MEMBER_PREFIX", "JWK_SET_MEDIA_TYPE", "jwk_set"]

EXTRA_MEMBER_PREFIX: Final = "cairn_"
JWK_SET_MEDIA_TYPE: Final = "application/jwk-set+json"  # RFC 7517 §8.5.1


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jwk_set(registry: Registry) -> dict[str, object]:
    """The JWK Set of every key in ``registry`` that is not revoked, in registry order."""
    keys: list[dict[str, str]] = []
    for member in registry.members:
        for key in member.keys:
            if key.status is KeyStatus.REVOKED:
                continue
            entry = {
                **key.as_jwk(),
                "cairn_member": member.id,
                "cairn_role": member.role.value,
                "cairn_status": key.status.value,
                "cairn_not_before": _rfc3339(key.not_before),
                "cairn_not_after": _rfc3339(key.not_after),
            }
            if key.retired_at is not None:
                entry["cairn_retired_at"] = _rfc3339(key.retired_at)
            if key.vkey is not None:
                entry["cairn_vkey"] = key.vkey
            keys.append(entry)
    return {
        "keys": keys,
        "cairn_federation": registry.federation,
        "cairn_registry_serial": registry.serial,
    }
