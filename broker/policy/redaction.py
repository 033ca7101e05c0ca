"""Cutting a referral down to what one recipient may see, before it is sealed for that recipient.

Pure: no I/O. ``redact`` takes the message and the policy's decision for one recipient and
returns what goes into that recipient's disclosure: for a referral, a ``DisclosedReferral``
holding only the groups and subsets the decision lists; for an Operation Encompass
notification, the notification unchanged (its type already holds the statutory content only).

A group's special-category or criminal-offence fields that the decision withholds
(``GroupShare.withheld``: no matching condition in the basis) are removed, DASH answers one
question topic at a time, with the score when answers are withheld.

Two protections apply whatever the agreement says, because a leak here can put a victim in
danger:

- contact routes flagged unsafe are never disclosed (G2 keeps only safe routes);
- the detail of an unsafe route (a number, an address) is masked wherever it appears in the
  free text disclosed (notes, summaries, wishes), so "ring 01632 960001" in a note cannot
  undo the rule above. Details with fewer than four letters or digits are too short to match
  safely and are only removed from G2.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any, Final

from broker.policy.decision import Decision
from schemas.dash import question_set
from schemas.disclosure import DisclosedReferral, GroupShare, ShareScope
from schemas.encompass import CHILD_AGE_UNDER, EncompassNotification, is_child
from schemas.referral import (
    FIELD_GROUPS,
    AgenciesActions,
    Child,
    FieldGroup,
    Referral,
)

__all__ = ["MASK", "agencies_in_scope", "children_in_scope", "redact", "unsafe_details"]

#: What an unsafe contact detail found in free text is replaced with.
MASK: Final = "[withheld]"
_FALLBACK_MASK: Final = "\u2014"  # an em dash: matched by no detail of four letters or digits

# Identifiers and codes, never free text: masking them would only break their format.
_NOT_TEXT: Final = frozenset(
    {
        "referral_id",
        "schema_version",
        "sender_agency",
        "sender_officer",
        "recipients",
        "police_reference",
        "marac_reference",
        "school_agency",
        "agency",
        "by_agency",
        "question_set",
        "nhs_number",
        "postcode",
    }
)
_MIN_SIGNIFICANT = 4  # letters or digits a detail needs before it is searched for in text
_PHONE = re.compile(r"[0-9\s()+\-.]+")


def redact(
    message: Referral | EncompassNotification, decision: Decision
) -> DisclosedReferral | EncompassNotification:
    """What ``decision.recipient`` receives of ``message``: only the groups the decision lists."""
    if not decision.allowed:
        raise RuntimeError("redact() called for a refused recipient")
    if isinstance(message, EncompassNotification):
        return message
    data: dict[str, Any] = {}
    # The age band the decision was made on, so redaction keeps exactly the children it counted.
    under = decision.child_age_under or CHILD_AGE_UNDER
    for share in decision.groups:
        value = _group(message, share, decision.recipient, under)
        if value is not None:
            data[FIELD_GROUPS[share.group]] = value
    if "header" not in data:
        raise RuntimeError("a decision to disclose a referral must include G0")
    patterns = _patterns(message)
    return DisclosedReferral.model_validate(_mask(data, patterns, key=None))


def children_in_scope(
    children: Iterable[Child],
    scope: ShareScope | None,
    recipient: str,
    *,
    on: date,
    under: int | None = CHILD_AGE_UNDER,
) -> tuple[Child, ...]:
    """The children a G4 share keeps: all, the recipient school's own, or those on no roll.

    A scoped share keeps only children: under ``under`` on ``on``, the incident date (DAA 2021
    s3), so a school is never given an adult as its pupil. ``under=None`` skips the age test,
    for the engine to tell "no pupil here" from "no pupil here is a child".
    """
    if scope is ShareScope.OWN_PUPIL:
        kept = tuple(c for c in children if c.school_agency == recipient)
    elif scope is ShareScope.HOME_EDUCATED:
        kept = tuple(c for c in children if c.home_educated)
    else:
        return tuple(children)
    if under is None:
        return kept
    return tuple(c for c in kept if is_child(c.date_of_birth, on, under=under))


def agencies_in_scope(
    value: AgenciesActions, scope: ShareScope | None, recipient: str
) -> AgenciesActions:
    """The G9 entries a share keeps: all, or only those naming the recipient agency."""
    if scope is not ShareScope.OWN_AGENCY:
        return value
    return AgenciesActions(
        involved=tuple(i for i in value.involved if i.agency == recipient),
        actions=tuple(a for a in value.actions if a.by_agency == recipient),
    )


def unsafe_details(referral: Referral) -> tuple[str, ...]:
    """The details of the contact routes flagged unsafe: what must never be disclosed."""
    if referral.safe_contact is None:
        return ()
    return tuple(r.detail for r in referral.safe_contact.routes if not r.safe)


def _group(referral: Referral, share: GroupShare, recipient: str, under: int) -> Any:
    group = share.group
    if group is FieldGroup.G4:
        kept = children_in_scope(
            referral.children,
            share.scope,
            recipient,
            on=referral.incident.occurred_at.date(),
            under=under,
        )
        return [_pick(c.model_dump(), share) for c in kept] or None
    value = referral.group(group)
    if value is None:
        return None
    if isinstance(value, AgenciesActions):
        value = agencies_in_scope(value, share.scope, recipient)
    dumped: dict[str, Any] = value.model_dump()  # type: ignore[attr-defined]  # a group model
    if group is FieldGroup.G2:
        dumped["routes"] = [r for r in dumped["routes"] if r["safe"]]
    if group is FieldGroup.G6 and dumped.get("dash") is not None and _cuts_dash(share):
        dumped["dash"] = _dash_topics(dumped["dash"], share)
    return _pick(dumped, share)


def _pick(dumped: dict[str, Any], share: GroupShare) -> dict[str, Any]:
    """The share's fields of one entry, less the classified ones it withholds."""
    gone = share.withheld_fields
    if share.subset is None:
        return {k: v for k, v in dumped.items() if k not in gone}
    return {k: v for k, v in dumped.items() if k in share.fields and k not in gone}


def _cuts_dash(share: GroupShare) -> bool:
    return bool(share.dash_topics or share.withheld_topics)


def _dash_topics(dash: dict[str, Any], share: GroupShare) -> dict[str, Any] | None:
    """The DASH answers of the topics the share keeps and does not withhold (None if none)."""
    qset = question_set(dash["question_set"])
    keep = {
        q.id
        for q in qset.questions
        if (not share.dash_topics or q.topic in share.dash_topics)
        and q.topic not in share.withheld_topics
    }
    answers = {q: a for q, a in dash["answers"].items() if q in keep}
    return {**dash, "answers": answers} if answers else None


# --- masking unsafe contact details in free text ---------------------------------------------


def _patterns(referral: Referral) -> tuple[re.Pattern[str], ...]:
    out = []
    for detail in unsafe_details(referral):
        if len(re.sub(r"\W", "", detail)) < _MIN_SIGNIFICANT:
            continue
        if _PHONE.fullmatch(detail):
            # The same number written with other spacing or punctuation is the same number.
            digits = re.sub(r"\D", "", detail)
            out.append(re.compile(r"(?<!\d)\(?" + r"[\s()\-.]*".join(digits) + r"(?!\d)"))
        else:
            words = detail.split()
            out.append(re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE))
    return tuple(out)


def _mask(node: Any, patterns: tuple[re.Pattern[str], ...], *, key: str | None) -> Any:
    if not patterns:
        return node
    return _masked(node, patterns, key)


def _masked(node: Any, patterns: tuple[re.Pattern[str], ...], key: str | None) -> Any:
    # The exact types model_dump makes first (this runs for every value disclosed), then
    # their subclasses, as isinstance would.
    kind = type(node)
    if kind is str:  # exactly str: enum members are str subclasses and are codes, not text
        return node if key in _NOT_TEXT else _mask_text(node, patterns)
    if kind is dict or isinstance(node, dict):
        return {k: _masked(v, patterns, k) for k, v in node.items()}
    if kind is list or kind is tuple or isinstance(node, list | tuple):
        return [_masked(v, patterns, key) for v in node]
    return node


def _mask_text(text: str, patterns: tuple[re.Pattern[str], ...]) -> str:
    for p in patterns:
        if p.search(text):
            break
    else:
        return text  # no detail in it: most text
    mask = MASK if not any(p.search(MASK) for p in patterns) else _FALLBACK_MASK
    out = text
    # A mask next to the remaining text could in theory complete another detail: repeat until
    # nothing matches, and give up on the text altogether if that does not settle.
    for _ in range(len(patterns) + 1):
        for p in patterns:
            out = p.sub(mask, out)
        if not any(p.search(out) for p in patterns):
            break
    else:
        out = mask
    # Never longer than the original, so a masked text still fits its field's length limit;
    # a prefix of a text with no match has no match either.
    return out[: len(text)] if len(out) > len(text) else out
