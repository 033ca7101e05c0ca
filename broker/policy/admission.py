"""Whether a message may be decided at all, and which of an agreement's bases it relies on.

Pure: no I/O. Before any recipient is decided, ``check_membership`` makes sure every agency named
can take part (``UnknownAgency``) and ``check_whole`` that the referral as a whole has a lawful
basis, a complete override record where consent was not obtained, and an agreement in force that
covers its purpose and accepts its basis (``PolicyRefusal``, HTTP 422: nothing is sent to
anyone). ``basis_for`` picks, of the bases an agreement accepts, the one the referral relies on;
the engine (``broker.policy.decide``) uses it per recipient too. Every refusal carries rule codes
that ``broker.policy.rules`` puts in words.
"""

from __future__ import annotations

from typing import Final

from broker.policy.agreements import Agreement, PurposeTerms
from broker.policy.decision import Routing
from schemas.classes import DataClass
from schemas.consent import Consent, ConsentOverride, ConsentState
from schemas.disclosure import LawfulBasis
from schemas.encompass import EncompassNotification
from schemas.errors import FieldProblem, InputError, UnknownAgency
from schemas.federation import AgencyRole, Federation
from schemas.referral import Purpose, Referral

__all__ = [
    "ENCOMPASS_RECIPIENT_ROLES",
    "OVERRIDE_ITEMS",
    "PolicyRefusal",
    "basis_for",
    "candidates",
    "check_membership",
    "check_whole",
    "consent_codes",
    "is_party",
    "missing_override_items",
    "relies_on",
]


ENCOMPASS_RECIPIENT_ROLES: Final = frozenset({AgencyRole.SCHOOL, AgencyRole.CHILDRENS_SOCIAL_CARE})


#: What a complete override record holds (docs/domain.md#consent-and-overrides), by field of
#: ``ConsentOverride``.
OVERRIDE_ITEMS: Final = (
    "decision_maker_id",
    "decision_maker_role",
    "reason",
    "justification",
    "subject_told",
    "legal_paragraph",
)


class PolicyRefusal(InputError):
    """The referral as a whole may not be shared: nothing is sent to anyone (HTTP 422).

    ``problems`` name the fields to change (``consent``, ``consent.override.justification``,
    ``header.purpose``); ``reasons`` are the rule codes (``lawful_basis.missing``,
    ``consent.override.incomplete``, ``agreement.none_for_purpose``,
    ``lawful_basis.not_accepted``); ``missing`` the field paths of the items to add (the
    override record's, or ``consent``). None of them carries personal data.
    """

    def __init__(
        self,
        message: str,
        problems: tuple[FieldProblem, ...] = (),
        reasons: tuple[str, ...] = (),
        missing: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, problems, reasons=reasons)
        self.missing = missing


def check_membership(route: Routing, federation: Federation) -> None:
    problems: list[FieldProblem] = []
    codes: list[str] = []  # the rule code of each problem, for broker.policy.rules

    def refuse(code: str, at: str, problem: str) -> None:
        codes.append(code)
        problems.append(FieldProblem(at, problem))

    sender = federation.get(route.sender)
    if sender is None:
        refuse("sender.unknown", "header.sender_agency", "not a member of this federation")
    encompass = route.purpose is Purpose.ENCOMPASS
    if encompass and sender is not None and sender.role is not AgencyRole.POLICE:
        refuse(
            "encompass.sender_not_police",
            "header.sender_agency",
            "only a police force sends Encompass notices",
        )
    many = len(route.recipients) > 1 or route.recipients_field.endswith("s")
    for i, recipient in enumerate(route.recipients):
        at = f"{route.recipients_field}.{i}" if many else route.recipients_field
        agency = federation.get(recipient)
        if agency is None:
            refuse("recipient.unknown", at, "not a member of this federation")
        elif recipient == route.sender:
            refuse("recipient.self", at, "a sender cannot refer to itself")
        elif encompass and agency.role not in ENCOMPASS_RECIPIENT_ROLES:
            refuse(
                "encompass.recipient_role",
                at,
                "Encompass notices go to schools or children's social care",
            )
    if problems:
        raise UnknownAgency(
            "the message names agencies that cannot take part; fix the named fields",
            tuple(problems),
            reasons=tuple(dict.fromkeys(codes)),
        )


def is_party(agreement: Agreement, agency: str, federation: Federation) -> bool:
    """A party in the role the federation gives it: a mis-roled party is no party."""
    party = agreement.party(agency)
    member = federation.get(agency)
    return party is not None and member is not None and party.role is member.role


def check_whole(
    message: Referral | EncompassNotification, route: Routing, covering: tuple[Agreement, ...]
) -> None:
    purpose = route.purpose.value
    if isinstance(message, Referral):
        consent = message.consent
        if consent is None:
            raise PolicyRefusal(
                "the referral names no lawful basis or consent state; fill in G8 (consent): the "
                "UK GDPR Art 6 basis, any Art 9 condition with its DPA 2018 paragraph, and the "
                "consent state",
                (FieldProblem("consent", "required: the lawful basis and consent state"),),
                ("lawful_basis.missing",),
                ("consent",),
            )
        if consent.state is not ConsentState.OBTAINED:
            missing = missing_override_items(consent.override)
            if missing:
                raise PolicyRefusal(
                    f"consent is '{consent.state.value}' and the override record is incomplete: "
                    f"missing {', '.join(missing)}",
                    tuple(
                        FieldProblem(f"consent.override.{item}", "missing from the override")
                        for item in missing
                    ),
                    ("consent.override.incomplete",),
                    tuple(f"consent.override.{item}" for item in missing),
                )
    if not covering:
        raise PolicyRefusal(
            f"no sharing agreement in force lets '{route.sender}' share for {purpose}",
            (FieldProblem("header.purpose", f"no agreement covers {purpose} for the sender"),),
            ("agreement.none_for_purpose",),
        )
    terms = [a.terms(route.purpose) for a in covering]
    if isinstance(message, EncompassNotification):
        if not any(t is not None and t.notification_basis for t in terms):
            raise PolicyRefusal(
                "no sharing agreement in force names the statutory basis for Operation "
                "Encompass notifications",
                (FieldProblem("header.purpose", "no statutory basis for notifications"),),
                ("lawful_basis.not_accepted",),
            )
        return
    consent = message.consent
    assert consent is not None  # checked above
    if not any(t is not None and basis_for(t, consent) is not None for t in terms):
        raise PolicyRefusal(
            f"no sharing agreement for {purpose} accepts the lawful basis the referral names "
            f"({consent_codes(consent) or 'none'})",
            (FieldProblem("consent", f"not a lawful basis any {purpose} agreement accepts"),),
            ("lawful_basis.not_accepted",),
        )


def missing_override_items(override: ConsentOverride | None) -> list[str]:
    """The items a complete override record lacks (all of them when there is none).

    A decoded referral cannot lack them (``ConsentOverride`` requires each); this guards the
    engine against a record built another way, and names what is missing either way.
    """
    if override is None:
        return list(OVERRIDE_ITEMS)
    missing = [
        item
        for item in OVERRIDE_ITEMS
        if getattr(override, item, None) is None
        or (isinstance(getattr(override, item), str) and not getattr(override, item).strip())
    ]
    if getattr(override, "subject_told", None) is False and not getattr(
        override, "subject_not_told_reason", None
    ):
        missing.append("subject_not_told_reason")
    return missing


def consent_codes(consent: Consent) -> str:
    codes = (
        consent.art6_basis,
        consent.art9_condition,
        consent.art10_condition,
        consent.dpa_condition,
        consent.statutory_gateway,
    )
    return "+".join(c.value for c in codes if c is not None)


def relies_on(basis: LawfulBasis, consent: Consent) -> bool:
    """The referral names every code the agreement's basis names."""
    pairs = (
        (basis.art6, consent.art6_basis),
        (basis.art9, consent.art9_condition),
        (basis.art10, consent.art10_condition),
        (basis.dpa, consent.dpa_condition),
        (basis.gateway, consent.statutory_gateway),
    )
    return all(want is None or want == have for want, have in pairs)


def candidates(terms: PurposeTerms, role: AgencyRole | None) -> tuple[LawfulBasis, ...]:
    """The bases a referral may rely on: Encompass has one per recipient role (any, if None)."""
    if terms.purpose is not Purpose.ENCOMPASS:
        return terms.lawful_bases
    if role is None:
        return tuple(terms.notification_basis.values())
    basis = terms.notification_basis.get(role)
    return () if basis is None else (basis,)


def basis_for(
    terms: PurposeTerms, consent: Consent, role: AgencyRole | None = None
) -> LawfulBasis | None:
    """Of the terms' bases the referral relies on, the one carrying the most data-class
    conditions, then the most specific (first on a tie)."""
    fits = [b for b in candidates(terms, role) if relies_on(b, consent)]
    return max(
        fits, key=lambda b: (sum(b.carries(c) for c in DataClass), len(b.codes)), default=None
    )
