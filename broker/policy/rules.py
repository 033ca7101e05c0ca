"""Every rule code in words: one plain-English sentence and the provision or clause it rests on.

Pure data and pure functions, no I/O. ``RULES`` is the table: a rule code, or a code pattern
with slots (``agreement.<agreement>.purpose.<purpose>``), a sentence and a citation (a statute
and section, a schedule paragraph, a principle or the agreement clause). ``explain(code)`` finds
the row and fills the slots from the code itself (agreement id, role, purpose, consent state,
override reason, MARAC criterion, lawful basis codes, group label), so a sentence can only ever
hold what the code holds: codes and ids, never personal data. A code with no row gets a generic
sentence with ``known=False``; a unit test fails on any code the engine emits without a row.

The words the sentences are made of are in ``schemas.legal``; what a granted subset
holds is spelt out by ``broker.policy.subsets``; a refusal of a message as a whole is put in
words by ``broker.policy.refusals``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from schemas.consent import ConsentState, OverrideReason
from schemas.federation import AgencyRole
from schemas.legal import (
    CRITERION_WORDS,
    GROUP_NAMES,
    LEGAL_CODES,
    OVERRIDE_WORDS,
    PURPOSE_WORDS,
    ROLE_WORDS,
    STATE_CITES,
    STATE_WORDS,
)
from schemas.marac import MaracCriterion
from schemas.referral import FieldGroup, Purpose

__all__ = [
    "RULES",
    "Rule",
    "RuleText",
    "explain",
    "explain_all",
]


@dataclass(frozen=True)
class Rule:
    """One row of the table: a code or pattern, its sentence and its citation (templates)."""

    pattern: str
    text: str
    citation: str


@dataclass(frozen=True)
class RuleText:
    """A rule code explained: the sentence and citation with the code's own values filled in."""

    code: str
    text: str
    citation: str
    known: bool = True  # False: no row in RULES matched, the sentence is the generic one

    def as_record(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text, "citation": self.citation}


_MARAC_CITE = "SafeLives MARAC referral criteria; SafeLives DASH risk identification checklist"
_ACCOUNTABLE = "UK GDPR Art 5(2) (accountability); DPA 2018 Sch 1 para 18(2)"
_MINIMISE = "UK GDPR Art 5(1)(c) (data minimisation)"
_SHARING_CODE = "ICO Data Sharing Code of Practice (DPA 2018 s121)"
_ENCOMPASS = "Domestic Abuse Act 2021 s49A"
_SPECIAL = "UK GDPR Art 9(1), Art 4(15); DPA 2018 s10(1)-(3), s35(5), Sch 1, Sch 8"
_CRIMINAL = "UK GDPR Art 10; DPA 2018 s10(5), s11(2), Sch 1"
_NO_SCHOOL = "UK GDPR Art 6(1)(e), Art 9(2)(g); DPA 2018 Sch 1 para 18; Children Act 2004 s11"


# --- the table --------------------------------------------------------------------------------

#: Every rule code the policy emits, with its sentence and citation. Slots in a pattern are
#: ``<agreement>``, ``<purpose>``, ``<role>``, ``<state>``, ``<reason>``, ``<criterion>``,
#: ``<basis>``, ``<group>`` (a group label) and ``<field>`` (a group's field, or
#: ``G6.dash.<topic>``); a template names ``{slot}`` (the code's value) or ``{slot_text}`` (in
#: words; ``{state_cite}``, ``{reason_cite}`` and ``{basis_cite}`` cite them).
RULES: Final[tuple[Rule, ...]] = (
    # agreements and roles
    Rule(
        "agreement.<agreement>.purpose.<purpose>",
        "Agreement {agreement} covers {purpose_text}, and the sender and this recipient are "
        "both parties to it in the roles the federation gives them.",
        "agreement {agreement}, purposes {purpose}",
    ),
    Rule(
        "agreement.<agreement>",
        "The disclosure is made under agreement {agreement}.",
        "agreement {agreement}",
    ),
    Rule(
        "agreement.none_covers_recipient",
        "No sharing agreement in force for this purpose has this recipient as a party in its "
        "federation role, so nothing may be disclosed to it.",
        _SHARING_CODE,
    ),
    Rule(
        "recipient.not_party",
        "This recipient is party to no sharing agreement in force for this purpose.",
        _SHARING_CODE,
    ),
    Rule(
        "agreement.none_for_purpose",
        "No sharing agreement in force lets the sender share for this purpose, so nothing is "
        "sent to anyone.",
        _SHARING_CODE,
    ),
    Rule(
        "agreement.<agreement>.role.<role>.granted",
        "Agreement {agreement} lets {role_text} receive the field groups it lists for this "
        "purpose, and nothing else.",
        f"agreement {{agreement}}, recipients {{role}}; {_MINIMISE}",
    ),
    Rule(
        "agreement.<agreement>.role.<role>.not_granted",
        "Agreement {agreement} grants {role_text} nothing for this purpose.",
        f"agreement {{agreement}}, recipients; {_MINIMISE}",
    ),
    Rule(
        "role.not_granted",
        "The agreements that cover this purpose grant this recipient's role nothing.",
        f"the agreement's recipients; {_MINIMISE}",
    ),
    # lawful basis
    Rule(
        "lawful_basis.<basis>",
        "The disclosure relies on {basis_text}.",
        "{basis_cite}",
    ),
    Rule(
        "lawful_basis.statutory.<basis>",
        "The notification relies on {basis_text}, the basis the agreement names for this "
        "recipient's role, not on consent.",
        "{basis_cite}",
    ),
    Rule(
        "agreement.<agreement>.lawful_basis.not_accepted",
        "Agreement {agreement} accepts none of the lawful bases the referral names for this "
        "purpose.",
        "agreement {agreement}, purposes lawful_bases; UK GDPR Art 6(1)",
    ),
    Rule(
        "lawful_basis.not_accepted",
        "No agreement covering this purpose accepts the lawful basis the referral names.",
        "the agreement's lawful_bases; UK GDPR Art 6(1), Art 9(2)",
    ),
    Rule(
        "lawful_basis.missing",
        "The referral names no lawful basis or consent state (G8), so it may be shared with "
        "nobody.",
        "UK GDPR Art 6(1), Art 9(2); DPA 2018 s10",
    ),
    Rule(
        "lawful_basis.invalid",
        "The lawful basis in G8 is incomplete or its codes do not belong together: Art 9(2)(g) "
        "needs a DPA 2018 Sch 1 Part 2 paragraph, Art 9(2)(h) needs Sch 1 para 2, and Sch 8 "
        "stands without Art 6 or Art 9.",
        "UK GDPR Art 6(1), Art 9(2); DPA 2018 s10, s35, Sch 1, Sch 8",
    ),
    # consent and overrides
    Rule(
        "consent.obtained",
        "The person consented to this referral, which answers the common-law duty of "
        "confidence; the data protection basis is the lawful basis the referral names.",
        "common-law duty of confidence; Caldicott principle 8",
    ),
    Rule(
        "consent.not_required_statutory",
        "Consent is not required: a statute requires this sharing, and the referral names it.",
        "UK GDPR Art 6(1)(c); the statutory gateway named in G8",
    ),
    Rule(
        "consent.<state>",
        "Consent was {state_text}: the sharing goes ahead only on a complete override record "
        "giving a reason the agreement accepts.",
        "{state_cite}",
    ),
    Rule(
        "consent.<state>.not_accepted",
        "The agreement does not accept sharing for this purpose when consent was {state_text}.",
        "the agreement's consent terms (consent.states)",
    ),
    Rule(
        "consent.state_not_accepted",
        "The agreement does not accept sharing for this purpose in the referral's consent state.",
        "the agreement's consent terms (consent.states)",
    ),
    Rule(
        "consent.invalid",
        "The consent record in G8 does not hold together (for example consent obtained without "
        "informing the person, or an override although consent was obtained).",
        "UK GDPR Art 5(2) (accountability); Caldicott principle 8",
    ),
    Rule(
        "consent.override.missing",
        "Consent was not obtained and the referral has no override record saying who decided "
        "to share without it, in what role, why, with what justification, whether the person "
        "was told, and on what legal paragraph.",
        _ACCOUNTABLE,
    ),
    Rule(
        "consent.override.incomplete",
        "Consent was not obtained and the override record is incomplete; the missing items "
        "must be recorded before anything is shared.",
        _ACCOUNTABLE,
    ),
    Rule(
        "override.<reason>",
        "Shared without consent on a recorded override: {reason_text}.",
        "{reason_cite}",
    ),
    Rule(
        "override.<reason>.accepted",
        "Consent was overridden because {reason_text}; the agreement accepts that reason and "
        "the override record is complete.",
        "{reason_cite}",
    ),
    Rule(
        "override.<reason>.not_accepted",
        "The agreement does not accept '{reason_text}' as a reason to share without consent "
        "for this purpose.",
        "the agreement's consent terms (consent.override_reasons)",
    ),
    Rule(
        "override.reason_not_accepted",
        "The agreement does not accept the override's reason for sharing without consent for "
        "this purpose.",
        "the agreement's consent terms (consent.override_reasons)",
    ),
    # MARAC
    Rule(
        "marac.criterion.<criterion>",
        "The case meets the MARAC referral criterion of {criterion_text}.",
        _MARAC_CITE,
    ),
    Rule(
        "marac.criterion.none",
        "The case meets no MARAC referral criterion (14 or more 'yes' DASH answers, "
        "professional judgement with its reason, or potential escalation), so it may not be "
        "shared for MARAC.",
        _MARAC_CITE,
    ),
    Rule(
        "marac.no_criterion",
        "The case meets no MARAC referral criterion, so it may not be shared for MARAC.",
        _MARAC_CITE,
    ),
    # objection to health-care sharing
    Rule(
        "objection.health_sharing.blocks",
        "The person objected to their information being shared for their health care, so the "
        "s251B duty to share does not apply, and no safeguarding override outweighs the "
        "objection.",
        "Health and Social Care Act 2012 s251B; Caldicott principle 7",
    ),
    Rule(
        "objection.health_sharing",
        "The person objected to sharing for their health care and no safeguarding override "
        "applies.",
        "Health and Social Care Act 2012 s251B",
    ),
    Rule(
        "objection.health_sharing.overridden.<reason>",
        "The person objected to sharing for their health care, but a safeguarding override "
        "applies ({reason_text}), so the objection does not stop this disclosure.",
        "Health and Social Care Act 2012 s251B; {reason_cite}; Caldicott principle 7",
    ),
    # Operation Encompass
    Rule(
        "encompass.recipient.school",
        "An Operation Encompass notice goes to the designated safeguarding lead of the child's "
        "school.",
        _ENCOMPASS,
    ),
    Rule(
        "encompass.recipient.childrens_social_care",
        "A child with no school is outside s49A, so the notice goes to children's social care "
        "on the safeguarding basis instead.",
        _NO_SCHOOL,
    ),
    Rule(
        "encompass.not_own_pupil",
        "No child of the referral is a pupil of this school, so the school is not told.",
        f"{_ENCOMPASS}; {_MINIMISE}",
    ),
    Rule(
        "encompass.no_home_educated_child",
        "No child of the referral is without a school, so children's social care does not get "
        "the notice (the child's school does).",
        f"Children Act 2004 s11; {_MINIMISE}",
    ),
    Rule(
        "encompass.not_a_child",
        "The notified person, or every child in the grant's scope, was 18 or over at the "
        "incident (or not yet born): s49A concerns a child, a person under 18, so no notice is "
        "sent.",
        f"Domestic Abuse Act 2021 s3, s49A; the agreement's child_age_under; {_MINIMISE}",
    ),
    Rule(  # the code before encompass.not_a_child: audit events made then still carry it
        "encompass.not_school_age",
        "The notified child was outside the ages the agreement's Operation Encompass terms "
        "then covered, so no notice was sent (s49A concerns a child: a person under 18).",
        _ENCOMPASS,
    ),
    Rule(
        "encompass.deadline.next_school_day",
        "The police must tell the school before the start of the next school day, whether or "
        "not officers attended; the deadline is when that day starts at the recipient.",
        f"{_ENCOMPASS}; the area's school calendar",
    ),
    Rule(
        "encompass.deadline.passed",
        "The start of the next school day had already passed when this was decided: the "
        "notice is late and goes at once.",
        _ENCOMPASS,
    ),
    Rule(
        "encompass.calendar.not_covered",
        "The configured term dates do not reach the deadline, so the conservative rule set it: "
        "the next weekday that is not a bank holiday (never later than the real one).",
        f"{_ENCOMPASS}; the area's school calendar (school-calendar.yaml)",
    ),
    Rule(
        "encompass.notify_by.after_deadline",
        "The sender's notify-by time is later than the start of the next school day; the "
        "statutory deadline applies.",
        _ENCOMPASS,
    ),
    Rule(
        "encompass.sender_not_police",
        "Only a police force sends Operation Encompass notices: the s49A duty is the police's.",
        _ENCOMPASS,
    ),
    Rule(
        "encompass.recipient_role",
        "Operation Encompass notices go to a school, or to children's social care for a child "
        "with no school.",
        f"{_ENCOMPASS}; Children Act 2004 s11",
    ),
    # what is disclosed
    Rule(
        "group.<group>.not_in_referral",
        "{group_text} is granted, but the sender left it out, so there is nothing of it to "
        "disclose.",
        "the agreement's grant for this role (recipients)",
    ),
    Rule(
        "group.<group>.no_entries",
        "{group_text} is granted, but its scope keeps no entry for this recipient, so it is not "
        "sent.",
        f"the agreement's subset scope; {_MINIMISE}",
    ),
    Rule(
        "special_category.withheld.no_condition",
        "Special category fields (health, including pregnancy, injuries and DASH answers on "
        "depression, mental health or substance use, and the other Art 9(1) classes) are "
        "withheld: the lawful basis relied on has no Art 9 condition with its DPA 2018 "
        "Schedule 1 paragraph, nor Schedule 8 for police Part 3 processing.",
        _SPECIAL,
    ),
    Rule(
        "special_category.withheld.<field>",
        "{field_text} is special category data and is withheld, for want of an Art 9 "
        "condition in the lawful basis relied on.",
        _SPECIAL,
    ),
    Rule(
        "criminal_offence.withheld.no_condition",
        "Criminal-offence fields (bail conditions, orders, criminal history) are withheld: the "
        "lawful basis relied on names no DPA 2018 Schedule 1 condition for them (s10(5)), nor "
        "police Part 3 processing (Schedule 8).",
        _CRIMINAL,
    ),
    Rule(
        "criminal_offence.withheld.<field>",
        "{field_text} is criminal-offence data and is withheld, for want of an Art 10 "
        "condition in the lawful basis relied on.",
        _CRIMINAL,
    ),
    Rule(
        "group.<group>.all_withheld",
        "{group_text} is granted, but every field of it is special category or "
        "criminal-offence data without its condition, so none of it is sent.",
        f"UK GDPR Art 9(1), Art 10; DPA 2018 s10, s11(2); {_MINIMISE}",
    ),
    Rule(
        "safe_contact.unsafe_routes_removed",
        "The referral marks some contact routes unsafe; they are removed from every disclosure "
        "and masked in its free text, so nobody contacts the victim that way.",
        "UK GDPR Art 5(1)(f) (integrity and confidentiality), Art 32",
    ),
    # recipients, membership and the message itself
    Rule(
        "recipient.no_usable_encryption_key",
        "The recipient has no usable encryption key in the federation registry, so nothing can "
        "be sent to it securely.",
        "UK GDPR Art 5(1)(f), Art 32 (security of processing)",
    ),
    Rule(
        "no-usable-encryption-key",
        "The recipient has no usable encryption key, so nothing is sent to it.",
        "UK GDPR Art 32 (security of processing)",
    ),
    Rule(
        "recipient.unknown",
        "A recipient named is not a member of this federation; nothing is sent to anyone "
        "until the message names only members.",
        f"the federation registry (agencies.yaml); {_SHARING_CODE}",
    ),
    Rule(
        "recipient.self",
        "A sender cannot name itself as a recipient.",
        "the message's header.recipients",
    ),
    Rule(
        "sender.unknown",
        "The sender is not a member of this federation.",
        f"the federation registry (agencies.yaml); {_SHARING_CODE}",
    ),
    Rule(
        "fan_out.exceeded",
        "The message names more recipients than the broker allows (max_recipients); name only "
        "those who need to know.",
        f"{_MINIMISE}; broker setting max_recipients",
    ),
    Rule(
        "schema.invalid",
        "The message does not match its schema; the named fields must be fixed before anything "
        "can be decided.",
        "the Cairn message schemas (schemas/json)",
    ),
)

_UNKNOWN = "No sentence is recorded for this rule code yet; ask the IG lead to add one."

# --- slots ------------------------------------------------------------------------------------


def _choice(values: Iterable[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


_LEGAL = _choice(LEGAL_CODES)
_SLOTS: Final[Mapping[str, str]] = {
    "agreement": r"[a-z0-9][a-z0-9-]{1,39}",
    "purpose": _choice(p.value for p in Purpose),
    "role": _choice(r.value for r in AgencyRole),
    "state": _choice(s.value for s in ConsentState),
    "reason": _choice(r.value for r in OverrideReason),
    "criterion": _choice(c.value for c in MaracCriterion),
    "basis": rf"(?:{_LEGAL})(?:\+(?:{_LEGAL}))*",
    "group": r"G(?:10|[0-9])(?:\.[a-z][a-z0-9_]{0,39})?",
    "field": r"G(?:10|[0-9])\.[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?",
}
_SLOT = re.compile(r"<([a-z]+)>")


def _basis_words(label: str) -> tuple[str, str]:
    codes = label.split("+")
    words = [f"{LEGAL_CODES[c][1]} ({LEGAL_CODES[c][0]})" for c in codes]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return text, "; ".join(LEGAL_CODES[c][0] for c in codes)


def _group_words(label: str) -> str:
    group, _, subset = label.partition(".")
    name = GROUP_NAMES[FieldGroup(group)]
    return f"{group} ({name}), subset {subset}," if subset else f"{group} ({name})"


def _field_words(label: str) -> str:
    """'G1.pregnancy', 'G6.dash.injury', 'G6.dash_score' in words."""
    group, _, field = label.partition(".")
    where = f"{group}, {GROUP_NAMES[FieldGroup(group)]}"
    if field.startswith("dash."):
        return f"the DASH answer on {field.removeprefix('dash.')} ({where})"
    if field == "dash_score":
        return f"the DASH score, which counts the answers withheld ({where})"
    return f"{field} ({where})"


def _values(slots: Mapping[str, str]) -> dict[str, str]:
    """Each slot's value, and its words for the templates."""
    out = dict(slots)
    for slot, value in slots.items():
        if slot == "purpose":
            out["purpose_text"] = PURPOSE_WORDS[Purpose(value)]
        elif slot == "role":
            out["role_text"] = ROLE_WORDS[AgencyRole(value)]
        elif slot == "state":
            out["state_text"] = STATE_WORDS[ConsentState(value)]
            out["state_cite"] = STATE_CITES[ConsentState(value)]
        elif slot == "reason":
            out["reason_text"], out["reason_cite"] = OVERRIDE_WORDS[OverrideReason(value)]
        elif slot == "criterion":
            out["criterion_text"] = CRITERION_WORDS[MaracCriterion(value)]
        elif slot == "basis":
            out["basis_text"], out["basis_cite"] = _basis_words(value)
        elif slot == "group":
            out["group_text"] = _group_words(value)
        elif slot == "field":
            out["field_text"] = _field_words(value)
    return out


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    regex: re.Pattern[str] | None  # None: an exact code

    def match(self, code: str) -> dict[str, str] | None:
        if self.regex is None:
            return {} if code == self.rule.pattern else None
        found = self.regex.fullmatch(code)
        return found.groupdict() if found else None


def _compile(rule: Rule) -> _Compiled:
    """Check one row (known slots, templates naming only what the slots give) and compile it."""
    slots = _SLOT.findall(rule.pattern)
    if len(set(slots)) != len(slots) or any(s not in _SLOTS for s in slots):
        raise RuntimeError(f"rule {rule.pattern}: unknown or repeated slot")
    if not rule.text.endswith(".") or not rule.citation:
        raise RuntimeError(f"rule {rule.pattern}: a sentence ending in '.' and a citation")
    sample = {s: _sample(s) for s in slots}
    try:
        _fill(rule, _values(sample))
    except (KeyError, IndexError) as exc:
        raise RuntimeError(f"rule {rule.pattern}: template names {exc}") from None
    if not slots:
        return _Compiled(rule, None)
    parts = _SLOT.split(rule.pattern)
    regex = "".join(
        f"(?P<{part}>{_SLOTS[part]})" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return _Compiled(rule, re.compile(regex))


def _sample(slot: str) -> str:
    return {
        "agreement": "example-isa",
        "purpose": Purpose.MARAC.value,
        "role": AgencyRole.IDVA.value,
        "state": ConsentState.REFUSED.value,
        "reason": OverrideReason.RISK_TO_VICTIM.value,
        "criterion": MaracCriterion.VISIBLE_HIGH_RISK.value,
        "basis": "art6_1_e",
        "group": "G4.example",
        "field": "G1.pregnancy",
    }[slot]


def _fill(rule: Rule, values: Mapping[str, str]) -> tuple[str, str]:
    text = rule.text.format_map(values)
    return text[0].upper() + text[1:], rule.citation.format_map(values)


@functools.cache  # the table is constant: compile and check it once
def _table() -> tuple[tuple[_Compiled, ...], tuple[_Compiled, ...]]:
    compiled = [_compile(r) for r in RULES]
    patterns = [r.rule.pattern for r in compiled]
    if len(patterns) != len(set(patterns)):
        raise RuntimeError("a rule pattern is listed twice in RULES")
    # Exact codes first, so a code never falls to a pattern when it has a row of its own.
    return (
        tuple(c for c in compiled if c.regex is None),
        tuple(c for c in compiled if c.regex is not None),
    )


def explain(code: str) -> RuleText:
    """The sentence and citation for ``code``; ``known`` is False when no row matches."""
    exact, patterns = _table()
    for entry in (*exact, *patterns):
        slots = entry.match(code)
        if slots is not None:
            text, citation = _fill(entry.rule, _values(slots))
            return RuleText(code, text, citation)
    return RuleText(code, _UNKNOWN, "", known=False)


def explain_all(codes: Iterable[str]) -> tuple[RuleText, ...]:
    """Each distinct code explained once, in the order first given."""
    return tuple(explain(c) for c in dict.fromkeys(codes))
