"""The federation registry: who the members are and which public keys each may use, when.

The registry is the one document every component trusts keys from
(docs/architecture.md#security-envelope), in the manner of X-Road's signed global configuration: the
members (agencies, the broker, the auditor, the witnesses that cosign the auditor's checkpoints),
their roles, and their public keys as JWKs with RFC
7638 kids, validity windows and status (active, retired, revoked). It is signed by the federation
root key as a compact JWS (Ed25519) and carries ``issued_at``, ``expires_at`` and a ``serial``, so a
component can refuse one that is unsigned, tampered with, stale, or older than one it has already
seen.

Pure: bytes and a clock in, verified objects out. The models are frozen, so a ``Registry`` that
exists has been validated; one that came from bytes has also had its signature checked.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import AwareDatetime, Field, StringConstraints, ValidationError, model_validator

from keys import note
from keys.errors import Reason, VerificationError
from keys.jose import KEY_AGREEMENT, SIGNATURE_ALGORITHM, sign_compact, verify_compact
from keys.jwk import (
    OkpPublicKey,
    SigningKey,
    kid_of,
    public_jwk,
    public_key_from_jwk,
    thumbprint,
)
from keys.note import AUDIT_LOG_ORIGIN, COSIGNATURE_V1, ED25519
from schemas.federation import AgencyRole
from schemas.referral import AgencyId, Frozen, ShortText

__all__ = [
    "AUDITOR_ID",
    "BROKER_ID",
    "CLOCK_SKEW",
    "MAX_REGISTRY_BYTES",
    "REGISTRY_FORMAT",
    "REGISTRY_TYP",
    "KeyStatus",
    "KeyUse",
    "Kid",
    "Member",
    "PublicJwk",
    "RegisteredKey",
    "Registry",
    "ServiceRole",
    "cosigner_vkey",
    "log_vkey",
    "parse_cosigner_vkey",
    "sign_registry",
    "verify_registry",
    "verify_registry_signature",
]

BROKER_ID: Final = "cairn-broker"
AUDITOR_ID: Final = "cairn-auditor"
REGISTRY_FORMAT: Final = "cairn-registry/1"
REGISTRY_TYP: Final = "cairn-registry+jws"
MAX_REGISTRY_BYTES: Final = 1_048_576  # bytes of signed registry
# How far apart two members' clocks may be. A key issued a moment ago must not be refused by a
# component whose clock runs slightly behind the issuer's.
CLOCK_SKEW: Final = timedelta(minutes=5)

Kid = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$"),
    Field(description="RFC 7638 SHA-256 thumbprint of the key, base64url"),
]


class KeyStatus(StrEnum):
    ACTIVE = "active"  # used for new messages
    RETIRED = "retired"  # replaced by rotation: still verifies and opens within the grace period
    REVOKED = "revoked"  # refused at once, whatever the message's age


class KeyUse(StrEnum):
    SIGNING = "sig"  # Ed25519
    ENCRYPTION = "enc"  # X25519


class ServiceRole(StrEnum):
    """Roles of the federation's own services, beside the agencies' roles."""

    BROKER = "broker"  # signs every disclosure
    AUDITOR = "auditor"  # signs audit-log checkpoints
    WITNESS = "witness"  # cosigns the auditor's checkpoints (C2SP tlog-witness, cosignature/v1)


def cosigner_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The C2SP signed-note verifier key of witness ``name``'s cosignature/v1 key."""
    return note.vkey(name, COSIGNATURE_V1, public_key)


def parse_cosigner_vkey(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """The witness name and Ed25519 key of a cosignature/v1 verifier key (ValueError if it is
    not one, or its key id does not match)."""
    return note.parse_vkey(vkey, COSIGNATURE_V1)


def log_vkey(public_key: Ed25519PublicKey, origin: str = AUDIT_LOG_ORIGIN) -> str:
    """The auditor's checkpoint key as the C2SP signed-note verifier key (type 0x01) named by
    the log's origin: what ``golang.org/x/mod/sumdb/note.NewVerifier`` and any tiles client
    take."""
    return note.vkey(origin, ED25519, public_key)


def _vkey_type(role: AgencyRole | ServiceRole) -> int | None:
    """The verifier-key type a member's signing keys carry: a witness's cosignature/v1 key
    (required), the auditor's note key (listed from this version on), nobody else's."""
    if role is ServiceRole.WITNESS:
        return COSIGNATURE_V1
    if role is ServiceRole.AUDITOR:
        return ED25519
    return None


_CURVE_FOR_USE: Final = {KeyUse.SIGNING: "Ed25519", KeyUse.ENCRYPTION: "X25519"}
_ALG_FOR_USE: Final = {KeyUse.SIGNING: SIGNATURE_ALGORITHM, KeyUse.ENCRYPTION: KEY_AGREEMENT}


class PublicJwk(Frozen):
    """An OKP public key as a JWK (RFC 8037), required members only."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519", "X25519"]
    x: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]

    @model_validator(mode="after")
    def _decodes(self) -> PublicJwk:
        public_key_from_jwk(self.model_dump())
        return self

    def public_key(self) -> OkpPublicKey:
        return _public_key(self.kty, self.crv, self.x)

    @classmethod
    def of(cls, key: OkpPublicKey) -> PublicJwk:
        return cls.model_validate(public_jwk(key))


@functools.lru_cache(maxsize=4096)
def _public_key(kty: str, crv: str, x: str) -> OkpPublicKey:
    """The key a JWK's members describe: a function of them alone, so each registry key is
    decoded once, not on every signature checked or disclosure sealed (keys are immutable)."""
    return public_key_from_jwk({"kty": kty, "crv": crv, "x": x})


class RegisteredKey(Frozen):
    """One public key of one member, with when and whether it may be used."""

    kid: Kid
    use: KeyUse
    jwk: PublicJwk
    not_before: AwareDatetime
    not_after: AwareDatetime
    status: KeyStatus
    retired_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None
    # A witness's or the auditor's signing key as its C2SP signed-note verifier key, so a third
    # party verifies checkpoints and cosignatures with the registry alone; left out when not
    # set, so every other key serialises (and is signed) exactly as before.
    vkey: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        max_length=200,
        description="The same key as jwk, as a C2SP signed-note verifier key "
        "(name+hex(key id)+base64(type || key)): a witness's cosignature/v1 key (type 0x04), "
        "the auditor's checkpoint key named by the log's origin (type 0x01)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RegisteredKey:
        if self.kid != thumbprint(self.jwk.model_dump()):
            raise ValueError("kid is not the RFC 7638 thumbprint of the key")
        if self.vkey is not None:
            if self.use is not KeyUse.SIGNING:
                raise ValueError("only a signing key has a vkey")
            _name, _kind, public = note.read_vkey(self.vkey)
            if public.public_bytes_raw() != self.jwk.public_key().public_bytes_raw():
                raise ValueError("the vkey names another key than jwk")
        if self.jwk.crv != _CURVE_FOR_USE[self.use]:
            raise ValueError(f"a '{self.use.value}' key must be on {_CURVE_FOR_USE[self.use]}")
        if self.not_before >= self.not_after:
            raise ValueError("not_before must be earlier than not_after")
        if self.status is KeyStatus.ACTIVE and (self.retired_at or self.revoked_at):
            raise ValueError("an active key has neither retired_at nor revoked_at")
        if self.status is KeyStatus.RETIRED and (self.retired_at is None or self.revoked_at):
            raise ValueError("a retired key has retired_at and no revoked_at")
        if self.status is KeyStatus.REVOKED and self.revoked_at is None:
            raise ValueError("a revoked key has revoked_at")
        return self

    def as_jwk(self) -> dict[str, str]:
        """The public JWK with kid, use and alg, for any JOSE library."""
        return {
            **self.jwk.model_dump(),
            "kid": self.kid,
            "use": self.use.value,
            "alg": _ALG_FOR_USE[self.use],
        }


class Member(Frozen):
    """An agency or a federation service, and every key it has had."""

    id: AgencyId
    name: ShortText
    role: AgencyRole | ServiceRole
    keys: tuple[RegisteredKey, ...] = ()

    @model_validator(mode="after")
    def _one_active_key_per_use(self) -> Member:
        kind = _vkey_type(self.role)
        for key in (k for k in self.keys if k.use is KeyUse.SIGNING):
            if self.role is ServiceRole.WITNESS and key.vkey is None:
                raise ValueError("a witness's signing keys have a vkey (cosignature/v1)")
            if key.vkey is None:
                continue  # the auditor's keys listed before vkeys were
            if kind is None:
                raise ValueError("only a witness's and the auditor's signing keys have a vkey")
            if note.read_vkey(key.vkey)[1] != kind:
                raise ValueError(f"a {self.role.value}'s vkey is of type 0x{kind:02x}")
        for use in KeyUse:
            active = [k for k in self.keys if k.use is use and k.status is KeyStatus.ACTIVE]
            if len(active) > 1:
                raise ValueError(f"{self.id} has more than one active '{use.value}' key")
        return self

    def active_key(self, use: KeyUse) -> RegisteredKey | None:
        return next((k for k in self.keys if k.use is use and k.status is KeyStatus.ACTIVE), None)


class Registry(Frozen):
    """The signed list of members and keys; see the module docstring."""

    format: Literal["cairn-registry/1"] = REGISTRY_FORMAT
    federation: ShortText
    serial: int = Field(ge=1, description="Increases with every re-signing")
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    retired_grace_s: int = Field(ge=0)  # seconds a retired key still verifies and opens
    members: tuple[Member, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        if self.issued_at >= self.expires_at:
            raise ValueError("issued_at must be earlier than expires_at")
        ids = [m.id for m in self.members]
        if len(ids) != len(set(ids)):
            raise ValueError("member ids must be unique")
        kids = [k.kid for m in self.members for k in m.keys]
        if len(kids) != len(set(kids)):
            raise ValueError("a key may belong to only one member, once")
        return self

    @property
    def retired_grace(self) -> timedelta:
        return timedelta(seconds=self.retired_grace_s)

    def member(self, member_id: str) -> Member | None:
        return next((m for m in self.members if m.id == member_id), None)

    def owner_of(self, kid: str) -> tuple[Member, RegisteredKey] | None:
        """The member holding ``kid`` and the key's entry, if any member holds it."""
        for m in self.members:
            for k in m.keys:
                if k.kid == kid:
                    return m, k
        return None

    def verification_key(
        self, signer: str, kid: str, *, now: datetime, clock_skew: timedelta = CLOCK_SKEW
    ) -> Ed25519PublicKey:
        """The public key that verifies ``signer``'s signature by ``kid`` at ``now``, if any."""
        entry = self.check_key(signer, kid, KeyUse.SIGNING, now=now, clock_skew=clock_skew)
        key = entry.jwk.public_key()
        if not isinstance(key, Ed25519PublicKey):  # the model validator makes this impossible
            raise RuntimeError("a signing key in the registry is not Ed25519")
        return key

    def encryption_key(
        self, recipient: str, *, now: datetime, clock_skew: timedelta = CLOCK_SKEW
    ) -> X25519PublicKey:
        """The key to encrypt to ``recipient`` now: its active encryption key, if valid now."""
        _aware(now)
        member = self.member(recipient)
        if member is None:
            raise VerificationError(
                Reason.UNKNOWN_MEMBER, f"{recipient!r} is not a member of the registry"
            )
        active = member.active_key(KeyUse.ENCRYPTION)
        if active is None or not (active.not_before - clock_skew <= now <= active.not_after):
            raise VerificationError(
                Reason.NO_ACTIVE_KEY,
                f"{recipient} has no encryption key valid now; ask the federation operator to "
                f"run 'cairn keys rotate --agency {recipient}'",
            )
        key = active.jwk.public_key()
        if not isinstance(key, X25519PublicKey):  # the model validator makes this impossible
            raise RuntimeError("an encryption key in the registry is not X25519")
        return key

    def check_key(
        self,
        member_id: str,
        kid: str,
        use: KeyUse,
        *,
        now: datetime,
        clock_skew: timedelta = CLOCK_SKEW,
    ) -> RegisteredKey:
        """The entry of ``kid`` if ``member_id`` may use it for ``use`` at ``now``.

        Raises ``VerificationError`` naming the first check that fails.
        """
        _aware(now)
        # 1. The kid is in the registry.
        found = self.owner_of(kid)
        if found is None:
            raise VerificationError(
                Reason.UNKNOWN_KEY,
                f"key {kid} is not in the federation registry; refresh the registry if it is "
                "newer than this one",
            )
        owner, entry = found
        # 2. It belongs to the member expected (the claimed sender, the broker, ourselves).
        if owner.id != member_id:
            reason = Reason.WRONG_SIGNER if use is KeyUse.SIGNING else Reason.WRONG_RECIPIENT
            raise VerificationError(reason, f"key {kid} belongs to {owner.id}, not to {member_id}")
        # 3. It is a key for this use.
        if entry.use is not use:
            raise VerificationError(
                Reason.WRONG_USE, f"key {kid} is a '{entry.use.value}' key, not '{use.value}'"
            )
        # 4. Revocation wins over everything, whatever the message's age.
        if entry.status is KeyStatus.REVOKED:
            raise VerificationError(Reason.KEY_REVOKED, f"key {kid} of {owner.id} is revoked")
        # 5. The validity window.
        if now < entry.not_before - clock_skew:
            raise VerificationError(
                Reason.KEY_NOT_YET_VALID, f"key {kid} of {owner.id} is not valid yet"
            )
        if now > entry.not_after:
            raise VerificationError(Reason.KEY_EXPIRED, f"key {kid} of {owner.id} has expired")
        # 6. A retired key is honoured for the grace period only.
        if entry.status is KeyStatus.RETIRED:
            if entry.retired_at is None:  # the model validator makes this impossible
                raise RuntimeError("a retired key without retired_at")
            if now > entry.retired_at + self.retired_grace:
                raise VerificationError(
                    Reason.KEY_RETIRED,
                    f"key {kid} of {owner.id} was retired and its grace period has ended",
                )
        return entry


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("the check time must be timezone-aware")


def sign_registry(registry: Registry, root: SigningKey) -> bytes:
    """The registry as a compact JWS signed by the federation root key."""
    payload = registry.model_dump_json().encode("utf-8")
    return sign_compact(payload, root, typ=REGISTRY_TYP)


def verify_registry_signature(token: bytes | str, root_key: Ed25519PublicKey) -> Registry:
    """The registry in ``token`` if the root key signed it, whether or not it is still fresh.

    Only the holder of the root key, about to re-sign the registry, has a use for a stale
    one; every other caller wants ``verify_registry``.
    """
    raw = token.encode("utf-8") if isinstance(token, str) else token
    # 1. A bare JSON document is an unsigned registry, not a malformed token.
    if raw.lstrip()[:1] == b"{":
        raise VerificationError(
            Reason.UNSIGNED, "the registry is not signed; only a root-signed registry is used"
        )
    root_kid = kid_of(root_key)

    def key_for(kid: str) -> Ed25519PublicKey:
        # 2. Signed by the federation root, not by some other key that named itself root.
        if kid != root_kid:
            raise VerificationError(
                Reason.WRONG_SIGNER,
                f"the registry is signed by key {kid}, not by the federation root {root_kid}",
            )
        return root_key

    # 3. The signature (Ed25519, or legacy EdDSA; typ cairn-registry+jws).
    payload = verify_compact(raw, key_for, typ=REGISTRY_TYP, max_bytes=MAX_REGISTRY_BYTES)
    # 4. The signed bytes are a valid registry document.
    try:
        return Registry.model_validate_json(payload)
    except ValidationError as exc:
        raise VerificationError(
            Reason.REGISTRY_INVALID,
            f"the signed registry is not a valid registry document ({exc.error_count()} "
            "problems); re-issue it with 'cairn keys'",
        ) from None


def verify_registry(
    token: bytes | str,
    root_key: Ed25519PublicKey,
    *,
    now: datetime,
    min_serial: int = 0,
    clock_skew: timedelta = CLOCK_SKEW,
) -> Registry:
    """The registry in ``token`` if the root key signed it and it is in force at ``now``.

    ``min_serial`` is the serial of the newest registry already trusted, so an attacker who
    can replay an older (validly signed) registry cannot bring back a revoked key.
    """
    _aware(now)
    registry = verify_registry_signature(token, root_key)
    # 5. Freshness: issued (allowing for skew) and not yet expired.
    if registry.issued_at > now + clock_skew:
        raise VerificationError(
            Reason.REGISTRY_NOT_YET_VALID,
            f"the registry was issued at {registry.issued_at.isoformat()}, after now; "
            "check this machine's clock",
        )
    if now >= registry.expires_at:
        raise VerificationError(
            Reason.REGISTRY_EXPIRED,
            f"the registry expired at {registry.expires_at.isoformat()}; the federation "
            "operator must re-sign it ('cairn keys refresh')",
        )
    # 6. No rollback to an older registry.
    if registry.serial < min_serial:
        raise VerificationError(
            Reason.REGISTRY_ROLLBACK,
            f"registry serial {registry.serial} is older than serial {min_serial} already seen",
        )
    return registry
