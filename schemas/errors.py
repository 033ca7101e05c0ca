"""The one exception hierarchy shared by every Cairn package.

It lives in ``schemas`` because that is the package every other one already depends on. Errors
fall into two families that callers must treat differently: the input was wrong (the sender must
change something; retrying the same request will fail the same way), or our infrastructure
failed (nothing was sent; the same request may succeed later). Programming mistakes raise
``TypeError`` / ``RuntimeError`` and never one of these.

    CairnError
    ├── InputError                 hostile or invalid input: refused, nothing changed
    │   ├── SchemaError            the message does not match its schema (names each field)
    │   ├── PayloadTooLarge        the body exceeds a configured limit
    │   ├── DisclosureTooLarge     a sealed disclosure is larger than Kafka takes
    │   ├── RequestTimeout         the body arrived slower than the configured minimum rate
    │   ├── UnsupportedMediaType   the body is not the media type the endpoint takes
    │   ├── UnknownAgency          a sender or recipient is not in the federation
    │   ├── AuthenticationError    the sender is not who it claims to be
    │   │   ├── UnknownSender      the TLS identity is not a member of the registry
    │   │   └── SenderMismatch     TLS identity, signer and the referral's sender differ
    │   ├── ReplayError            a referral id reused with different content
    │   └── VerificationError      a signature, key or envelope failed verification
    │                              (keys.errors.VerificationError adds a reason code)
    └── InfrastructureError        a dependency failed: nothing was sent, retry later
        ├── TransportError         Kafka did not acknowledge the messages
        ├── RegistryUntrusted      our own registry is unsigned, tampered or expired
        ├── SigningUnavailable     our own signing key is revoked, expired or missing
        └── StateUnavailable       the shared state store (SQLite or PostgreSQL) did not answer

Messages never carry personal data: they name fields and limits, never the values sent.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuthenticationError",
    "CairnError",
    "DisclosureTooLarge",
    "FieldProblem",
    "InfrastructureError",
    "InputError",
    "PayloadTooLarge",
    "RegistryUntrusted",
    "ReplayError",
    "RequestTimeout",
    "SchemaError",
    "SenderMismatch",
    "SigningUnavailable",
    "StateUnavailable",
    "TransportError",
    "UnknownAgency",
    "UnknownSender",
    "UnsupportedMediaType",
    "VerificationError",
]


class CairnError(Exception):
    """Base of every error Cairn raises on purpose; ``str()`` says what to do next."""


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with one field: a dotted path into the message and what is wrong."""

    field: str
    problem: str


class InputError(CairnError):
    """The input was refused; sending the same thing again will be refused again.

    ``problems`` names each offending field, where the error is about fields; ``reasons`` are
    rule codes (``recipient.unknown``, ``fan_out.exceeded``) where a rule refused it, which
    ``broker.policy.rules`` puts in words. Neither carries personal data.
    """

    def __init__(
        self,
        message: str,
        problems: tuple[FieldProblem, ...] = (),
        *,
        reasons: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.problems = problems
        self.reasons = reasons


class SchemaError(InputError):
    """The message does not match its schema; ``problems`` names every bad field."""


class PayloadTooLarge(InputError):
    """The body is larger than the configured limit; it was not read in full."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"the request body exceeds the limit of {limit_bytes} bytes; "
            "split the submission or ask the operator about max_body_bytes"
        )
        self.limit_bytes = limit_bytes


class DisclosureTooLarge(InputError):
    """A disclosure sealed from this referral is larger than Kafka accepts; nothing was sent,
    and the same referral would be refused again (its free text must shrink)."""


class RequestTimeout(InputError):
    """The body arrived too slowly; the broker stopped waiting and closes the connection.

    An input error because the sender's side is at fault, though unlike most the same request
    may succeed over a faster link.
    """

    def __init__(self, grace_s: float, min_bytes_per_s: int) -> None:
        super().__init__(
            f"the request body arrived slower than {min_bytes_per_s} bytes per second after "
            f"the first {grace_s:g} seconds; send it again over a faster link"
        )
        self.grace_s = grace_s
        self.min_bytes_per_s = min_bytes_per_s


class UnsupportedMediaType(InputError):
    """The body is not of a media type the endpoint accepts."""


class UnknownAgency(InputError):
    """An agency named in the message is not a member of the federation."""


class AuthenticationError(InputError):
    """The sender could not be authenticated as the agency it claims to be."""


class UnknownSender(AuthenticationError):
    """The TLS client certificate names an agency the registry does not list."""


class SenderMismatch(AuthenticationError):
    """The TLS identity and the referral's sender are different agencies."""


class ReplayError(InputError):
    """A referral id was accepted before with other content (the same id, a different message)."""


class VerificationError(InputError):
    """A message failed verification; it must be refused or quarantined, never acted on."""


class InfrastructureError(CairnError):
    """A dependency failed; nothing was sent and the same request may succeed later."""


class TransportError(InfrastructureError):
    """Kafka did not acknowledge every message of a submission, so none of them counts."""


class RegistryUntrusted(InfrastructureError):
    """This component's copy of the federation registry cannot be trusted; it refuses to work."""


class SigningUnavailable(InfrastructureError):
    """This component has no signing key it may use now; an operator must rotate its keys."""


class StateUnavailable(InfrastructureError):
    """The shared state store did not answer (or is misconfigured); nothing was sent.

    The message names the store without its password and the setting to check.
    """
