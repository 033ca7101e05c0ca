"""Keyed pseudonyms of the people a referral is about, for the audit log and its subject query.

The audit log never says who a referral is about (docs/architecture.md#audit): the people in it
appear only as keyed pseudonyms, ``HMAC-SHA256(secret, normalised identifier)`` under the
federation's pseudonym secret, so an IG officer who holds a person's identifiers (and the secret)
can find every disclosure about them while the log itself never says who they are.

Normalisation (``nhs_identifier``, ``name_identifier``), so that the identifiers an IG officer
types map to the same pseudonyms as the referral that was sent:

- NHS number: the 10 digits, spaces and other separators removed; the check digit must hold.
- Name and date of birth: the *first* given name and the *whole* family name, each decomposed
  (Unicode NFKD), stripped of accents, case-folded and reduced to letters and digits, so
  "Zoë-Ann" and "zoeann", "O'Brien" and "OBRIEN" agree; then the ISO date of birth. An alias
  ("Tess Fictional") is split into its first word (given) and the rest (family) and paired with
  the same date of birth. A person without a date of birth gets no name pseudonym: a name alone
  would match strangers.

``subject_pseudonyms`` takes every such identifier a referral carries for the victim, each child
and the perpetrator (an Operation Encompass notification: the child), because each of them is a
data subject who may ask what was disclosed about them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Annotated, Final

from pydantic import Field, StringConstraints

from schemas.encompass import EncompassNotification
from schemas.referral import Referral

__all__ = [
    "MIN_SECRET_BYTES",
    "Pseudonym",
    "name_identifier",
    "nhs_identifier",
    "person_pseudonyms",
    "pseudonym",
    "subject_pseudonyms",
]

MIN_SECRET_BYTES: Final = 32  # bytes of pseudonym secret: HMAC-SHA256's block-level strength
# Domain separation: the HMAC input names its purpose and version, so the same secret could
# never produce a pseudonym that collides with another use of it.
_PSEUDONYM_CONTEXT: Final = b"cairn-pseudonym/1\x00"

Pseudonym = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$"),
    Field(description="base64url HMAC-SHA256 of a normalised identifier; see schemas.pseudonyms"),
]

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_NON_DIGIT = re.compile(r"[^0-9]")
_NHS_CHARS = re.compile(r"[0-9][0-9 -]*")


def _name_token(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub("", bare.casefold())


def nhs_identifier(nhs_number: str) -> str:
    """The normalised identifier of an NHS number: ``nhs:`` and its 10 digits.

    Raises ``ValueError`` unless the digits are a valid NHS number (modulus 11).
    """
    if _NHS_CHARS.fullmatch(nhs_number) is None:
        raise ValueError("an NHS number is 10 digits, optionally spaced")
    digits = _NON_DIGIT.sub("", nhs_number)
    if len(digits) != 10:
        raise ValueError("an NHS number is 10 digits, optionally spaced")
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = (11 - total % 11) % 11
    if check == 10 or check != int(digits[9]):
        raise ValueError("the NHS number's check digit is wrong")
    return f"nhs:{digits}"


def name_identifier(given_name: str, family_name: str, date_of_birth: date) -> str:
    """The normalised identifier of a person by first given name, family name and birth date.

    Raises ``ValueError`` if either name has no letters or digits left after normalisation.
    """
    words = given_name.split()
    given = _name_token(words[0]) if words else ""
    family = _name_token(family_name)
    if not given or not family:
        raise ValueError("a name pseudonym needs a given name and a family name")
    return f"name:{family}|{given}|{date_of_birth.isoformat()}"


def pseudonym(secret: bytes, identifier: str) -> str:
    """The pseudonym of one normalised identifier: base64url HMAC-SHA256 under ``secret``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
    mac = hmac.new(secret, _PSEUDONYM_CONTEXT + identifier.encode("utf-8"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def _alias_identifier(alias: str, date_of_birth: date) -> str | None:
    words = alias.split()
    if len(words) < 2:
        return None
    try:
        return name_identifier(words[0], " ".join(words[1:]), date_of_birth)
    except ValueError:
        return None


def person_pseudonyms(
    secret: bytes,
    *,
    nhs_number: str | None = None,
    given_name: str | None = None,
    family_name: str | None = None,
    date_of_birth: date | None = None,
    aliases: Sequence[str] = (),
) -> tuple[str, ...]:
    """Every pseudonym one person's identifiers give, sorted: what the subject query looks for.

    Raises ``ValueError`` when the identifiers give none (a name without a date of birth).
    """
    identifiers: set[str] = set()
    if nhs_number:
        identifiers.add(nhs_identifier(nhs_number))
    if date_of_birth is not None:
        if given_name and family_name:
            identifiers.add(name_identifier(given_name, family_name, date_of_birth))
        for alias in aliases:
            found = _alias_identifier(alias, date_of_birth)
            if found is not None:
                identifiers.add(found)
    if not identifiers:
        raise ValueError(
            "give an NHS number, or a given name, family name and date of birth, to find a person"
        )
    return tuple(sorted(pseudonym(secret, i) for i in identifiers))


# One person's identifiers as a message carries them: NHS number, given and family name, date
# of birth, aliases.
_Identity = tuple[str | None, str | None, str | None, date | None, Sequence[str]]


def _identities(message: Referral | EncompassNotification) -> Iterator[_Identity]:
    if isinstance(message, EncompassNotification):
        c = message.content
        yield None, c.child_given_name, c.child_family_name, c.child_date_of_birth, ()
        return
    v = message.victim
    yield v.nhs_number, v.given_name, v.family_name, v.date_of_birth, v.aliases
    for child in message.children:
        yield None, child.given_name, child.family_name, child.date_of_birth, ()
    p = message.perpetrator
    if p is not None and p.date_of_birth is not None:
        yield None, p.given_name, p.family_name, p.date_of_birth, p.aliases


def subject_pseudonyms(message: Referral | EncompassNotification, secret: bytes) -> tuple[str, ...]:
    """The pseudonyms of everyone ``message`` is about: victim, children, perpetrator.

    Only identifiers the message carries are used; a perpetrator without a date of birth adds
    none (see the module docstring).
    """
    found: set[str] = set()
    for nhs_number, given, family, born, aliases in _identities(message):
        found.update(
            person_pseudonyms(
                secret,
                nhs_number=nhs_number,
                given_name=given,
                family_name=family,
                date_of_birth=born,
                aliases=aliases,
            )
        )
    return tuple(sorted(found))
