"""Deciding, per intended recipient, whether and what it may receive, and why.

Pure: no I/O. ``decide`` takes the message, the federation, the sharing agreements, the time and
the school calendar, and returns one ``Decision`` per intended recipient, in the sender's order:
allowed or refused, the exact groups and subsets to disclose, the lawful basis and consent basis
relied on, the agreement and its retention, the Operation Encompass deadline, and the ids of the
rules that produced it, so ``cairn policy explain`` can show an IG officer why. Rule ids and
reason codes are made of codes and agency or agreement ids only, never personal data.

The steps, in order:

1. fan-out: more recipients than ``max_recipients`` is a ``SchemaError``;
2. membership (``broker.policy.admission``, like step 3): the sender and every recipient are
   federation members, nobody refers to itself, Encompass goes from police to schools or
   children's social care (``UnknownAgency``);
3. the referral as a whole (``PolicyRefusal``, HTTP 422): it names a lawful basis (G8), an
   override record is complete when consent was not obtained, an agreement in force covers the
   purpose with the sender as a party, and one of them accepts the basis the referral names;
4. per recipient: an agreement covering the purpose has it as a party in its federation role
   and grants that role something; the agreement accepts the lawful basis, the consent state
   and the override reason; a MARAC criterion is met where the terms require one; a recorded
   objection to health-care sharing blocks health-care purposes unless a safeguarding override
   applies; Encompass reaches only the school of a child under the terms' ``child_age_under``
   (18, DAA 2021 s3) at the incident, or children's social care for such a child on no school
   roll (home-educated or off roll), on the basis the agreement names for that role (s49A for a
   school, the safeguarding basis for children's social care), with its deadline at the start of
   the next school day;
5. what is disclosed: the granted groups present in the referral; a classified field
   (``schemas.classes``: special category, UK GDPR Art 9(1); criminal-offence data, Art 10)
   only when both the basis relied on and the referral's own G8 carry its condition (Art 9 with
   its DPA 2018 Schedule 1 paragraph, or Schedule 8; a Schedule 1 Part 1-3 paragraph, s10(5),
   or Schedule 8), else it is withheld, DASH answers one question topic at a time
   (``Decision.withheld``); unsafe contact routes never (``broker.policy.redaction``);
6. an allowed recipient without a usable encryption key is refused (no-usable-encryption-key).

Rule ids (``Decision.rules``), for the IG officer:

=============================================  ============================================
``agreement.<id>.purpose.<PURPOSE>``           the agreement covers the purpose, both parties
``agreement.none_covers_recipient``            the recipient is party to no such agreement
``agreement.<id>.role.<role>.granted``         the role may receive something (or
                                               ``.not_granted``)
``lawful_basis.<codes>``                       the basis relied on (``agreement.<id>.
                                               lawful_basis.not_accepted`` when none fits)
``lawful_basis.statutory.<codes>``             a notification's basis for the recipient's
                                               role (s49A to a school; Art 6(1)(e), Art
                                               9(2)(g), Sch 1 para 18, CA 2004 s11 to CSC)
``consent.obtained`` / ``consent.<state>``     the consent state (``.not_accepted`` if refused)
``override.<reason>.accepted``                 the override reason (``.not_accepted``)
``marac.criterion.<criterion>``                each MARAC criterion met (``marac.criterion.none``)
``objection.health_sharing.blocks``            an objection stops health-care sharing
``objection.health_sharing.overridden.<r>``    ... unless a safeguarding override applies
``encompass.recipient.<role>``                 Encompass to a school or children's social care
``encompass.not_own_pupil``                    no child of the referral is at this school
``encompass.no_home_educated_child``           no child of the referral is on no school roll
``encompass.not_a_child``                      the notified person (or every pupil or
                                               off-roll child in scope) was 18 or over at the
                                               incident (``child_age_under``), or not born
``encompass.deadline.next_school_day``         the deadline is set (``Decision.deadline``)
``encompass.deadline.passed``                  it was already past at decision time
``encompass.calendar.not_covered``             the term dates do not reach the deadline
``encompass.notify_by.after_deadline``         the sender's notify_by is later than the law's
``group.<label>.not_in_referral``              granted, but the sender left it out
``group.<label>.no_entries``                   granted, but its scope keeps no entry
``special_category.withheld.no_condition``     special-category fields withheld: no Art 9
                                               condition (nor Schedule 8) in the basis
``special_category.withheld.<G>.<field>``      ... this one (``G6.dash.<topic>`` for DASH
                                               answers, ``G6.dash_score`` with them)
``criminal_offence.withheld.no_condition``     criminal-offence fields withheld: no Schedule 1
                                               paragraph (s10(5)) nor Schedule 8 in the basis
``criminal_offence.withheld.<G>.<field>``      ... this one
``group.<label>.all_withheld``                 granted, but every field of it was withheld
``safe_contact.unsafe_routes_removed``         the referral has unsafe routes; none are sent
``recipient.no_usable_encryption_key``         allowed, but no key to encrypt to
=============================================  ============================================

``Decision.reasons`` are the few codes a sender sees on its receipt: for an allowed recipient
the agreement (``agreement.<id>``) and the consent basis (``consent.obtained``,
``override.<reason>``, ``consent.not_required_statutory``); for a refused one why
(``recipient.not_party``, ``role.not_granted``, ``lawful_basis.not_accepted``,
``consent.state_not_accepted``, ``override.reason_not_accepted``, ``marac.no_criterion``,
``objection.health_sharing``, ``encompass.not_own_pupil``, ``encompass.no_home_educated_child``,
``encompass.not_a_child``, ``no-usable-encryption-key``).

The errors raised before anyone is decided carry rule codes too (``reasons``): the fan-out
``SchemaError`` ``fan_out.exceeded``; ``UnknownAgency`` one per problem, ``sender.unknown``,
``encompass.sender_not_police``, ``recipient.unknown``, ``recipient.self``,
``encompass.recipient_role``; ``PolicyRefusal`` those named on it, with the ``missing`` items.
``broker.policy.rules`` holds the sentence and citation of every code named here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final

from broker.policy.admission import basis_for, check_membership, check_whole, is_party
from broker.policy.agreements import Agreement, PurposeTerms
from broker.policy.calendar import WEEKDAYS, SchoolCalendar, next_school_day_start
from broker.policy.decision import Decision, Routing, Withheld, routing
from broker.policy.redaction import agencies_in_scope, children_in_scope, unsafe_details
from schemas.classes import DataClass
from schemas.consent import (
    Art9Condition,
    ConsentState,
    OverrideReason,
    StatutoryGateway,
)
from schemas.dash import DEFAULT_QUESTION_SET
from schemas.disclosure import ConsentBasis, GroupShare, LawfulBasis, ShareScope
from schemas.encompass import EncompassNotification, is_child
from schemas.errors import FieldProblem, SchemaError
from schemas.federation import AgencyRole, Federation
from schemas.marac import MaracCriterion, marac_eligibility
from schemas.referral import FieldGroup, Purpose, Referral

__all__ = [
    "HEALTH_CARE_PURPOSES",
    "SAFEGUARDING_REASONS",
    "Decision",
    "Routing",
    "decide",
    "routing",
]

#: Purposes that are sharing for the person's health care, where an objection counts (s251B).
HEALTH_CARE_PURPOSES: Final = frozenset({Purpose.HEALTH_SAFEGUARDING})
#: Override reasons that are safeguarding, and so outweigh an objection to health sharing.
SAFEGUARDING_REASONS: Final = frozenset(
    {
        OverrideReason.RISK_TO_VICTIM,
        OverrideReason.RISK_TO_CHILDREN,
        OverrideReason.PREJUDICE_PROTECTION,
        OverrideReason.VITAL_INTERESTS,
    }
)


def decide(
    message: Referral | EncompassNotification,
    federation: Federation,
    *,
    agreements: Sequence[Agreement],
    now: datetime,
    max_recipients: int,
    can_receive: Callable[[str], bool] = lambda _agency: True,
    calendar: SchoolCalendar = WEEKDAYS,
    route: Routing | None = None,
) -> list[Decision]:
    """One decision per intended recipient, in the order the sender named them.

    Raises ``SchemaError`` (fan-out), ``UnknownAgency`` (membership) or ``PolicyRefusal`` (no
    lawful or consent basis for the referral as a whole) before deciding anyone.
    """
    if now.tzinfo is None:
        raise TypeError("now must be timezone-aware")
    route = route or routing(message)
    # 1 fan-out, before anything else is looked at
    if len(route.recipients) > max_recipients:
        raise SchemaError(
            f"a referral may name at most {max_recipients} recipients",
            (FieldProblem(route.recipients_field, f"at most {max_recipients} recipients"),),
            reasons=("fan_out.exceeded",),
        )
    # 2 membership
    check_membership(route, federation)
    # 3 the referral as a whole
    today = now.astimezone(UTC).date()
    covering = tuple(
        a
        for a in sorted(agreements, key=lambda a: a.id)
        if a.in_force(today)
        and a.terms(route.purpose) is not None
        and is_party(a, route.sender, federation)
    )
    check_whole(message, route, covering)
    # 4-6 each recipient
    case = _Case(message, federation, route, covering, now, calendar)
    decisions = []
    for recipient in route.recipients:
        decision = case.decide(recipient)
        if decision.allowed and not can_receive(recipient):
            decision = Decision(
                recipient,
                allowed=False,
                reasons=("no-usable-encryption-key",),
                rules=(*decision.rules, "recipient.no_usable_encryption_key"),
            )
        decisions.append(decision)
    return decisions


def _health_care(purpose: Purpose, basis: LawfulBasis) -> bool:
    return (
        purpose in HEALTH_CARE_PURPOSES
        or basis.gateway is StatutoryGateway.HSCA_2012_S251B
        or basis.art9 is Art9Condition.HEALTH_OR_SOCIAL_CARE
    )


class _Refused(Exception):
    """One agreement does not let this recipient have the message; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Case:
    """One message being decided: what every recipient's decision shares."""

    message: Referral | EncompassNotification
    federation: Federation
    route: Routing
    covering: tuple[Agreement, ...]
    now: datetime
    calendar: SchoolCalendar
    _marac: tuple[MaracCriterion, ...] | None = field(default=None, init=False)

    @property
    def referral(self) -> Referral | None:
        return self.message if isinstance(self.message, Referral) else None

    def marac(self, referral: Referral) -> tuple[MaracCriterion, ...]:
        if self._marac is None:
            self._marac = marac_eligibility(
                referral.risk, escalation_threshold=self.federation.marac_escalation_threshold
            ).criteria
        return self._marac

    def decide(self, recipient: str) -> Decision:
        agency = self.federation.get(recipient)
        assert agency is not None  # membership was checked
        parties = [a for a in self.covering if is_party(a, recipient, self.federation)]
        if not parties:
            return Decision(
                recipient,
                allowed=False,
                reasons=("recipient.not_party",),
                rules=("agreement.none_covers_recipient",),
            )
        rules: list[str] = []
        reasons: list[str] = []
        for agreement in parties:
            trail: list[str] = []
            try:
                decision = self._under(agreement, recipient, agency.role, trail)
            except _Refused as refused:
                rules.extend(trail)
                if refused.reason not in reasons:
                    reasons.append(refused.reason)
                continue
            # The first agreement (by id) that allows wins; the ones tried before it show why.
            return replace(decision, rules=(*rules, *trail))
        return Decision(recipient, allowed=False, reasons=tuple(reasons), rules=tuple(rules))

    def _under(
        self, agreement: Agreement, recipient: str, role: AgencyRole, rules: list[str]
    ) -> Decision:
        purpose = self.route.purpose
        terms = agreement.terms(purpose)
        assert terms is not None  # only covering agreements get here
        rules.append(f"agreement.{agreement.id}.purpose.{purpose.value}")
        grant = agreement.grant(purpose, role)
        if grant is None:
            rules.append(f"agreement.{agreement.id}.role.{role.value}.not_granted")
            raise _Refused("role.not_granted")
        rules.append(f"agreement.{agreement.id}.role.{role.value}.granted")
        referral = self.referral
        if referral is None:
            basis, consent_basis = self._statutory(agreement, terms, role, rules)
        else:
            basis, consent_basis = self._consented(agreement, terms, role, referral, rules)
        deadline = None
        if purpose is Purpose.ENCOMPASS:
            deadline = self._encompass(recipient, role, terms, rules)
        groups, withheld = self._groups(grant, basis, recipient, terms.child_age_under, rules)
        if referral is not None and unsafe_details(referral):
            rules.append("safe_contact.unsafe_routes_removed")
        consent_reason = (
            f"override.{consent_basis.override_reason.value}"
            if consent_basis.override_reason is not None
            else f"consent.{consent_basis.state.value}"
        )
        return Decision(
            recipient,
            allowed=True,
            reasons=(f"agreement.{agreement.id}", consent_reason),
            groups=groups,
            lawful_basis=basis,
            consent_basis=consent_basis,
            deadline=deadline,
            agreement=agreement.id,
            retention=agreement.retention,
            child_age_under=terms.child_age_under,
            withheld=withheld,
        )

    def _statutory(
        self, agreement: Agreement, terms: PurposeTerms, role: AgencyRole, rules: list[str]
    ) -> tuple[LawfulBasis, ConsentBasis]:
        """A notification: the basis the agreement names for the role; consent not required.

        s49A for a school; for children's social care (a child on no school roll, whom s49A
        does not cover) the safeguarding basis, Art 6(1)(e) and 9(2)(g) with DPA 2018 Sch 1
        para 18 and the Children Act 2004 s11 duty.
        """
        state = ConsentState.NOT_REQUIRED_STATUTORY
        basis = _accepted(
            agreement, terms, terms.notification_basis.get(role), state, rules, "statutory."
        )
        return basis, ConsentBasis(state=state)

    def _consented(
        self,
        agreement: Agreement,
        terms: PurposeTerms,
        role: AgencyRole,
        referral: Referral,
        rules: list[str],
    ) -> tuple[LawfulBasis, ConsentBasis]:
        consent = referral.consent
        assert consent is not None  # checked for the referral as a whole
        state = consent.state
        basis = _accepted(agreement, terms, basis_for(terms, consent, role), state, rules)
        override = consent.override
        reason: OverrideReason | None = None
        if state is ConsentState.OBTAINED:
            consent_basis = ConsentBasis(state=state)
        else:
            assert override is not None  # complete: checked for the referral as a whole
            reason = override.reason
            if reason not in terms.consent.override_reasons:
                rules.append(f"override.{reason.value}.not_accepted")
                raise _Refused("override.reason_not_accepted")
            rules.append(f"override.{reason.value}.accepted")
            consent_basis = ConsentBasis(
                state=state, override_reason=reason, override_paragraph=override.legal_paragraph
            )
        if terms.marac_criterion_required:
            criteria = self.marac(referral)
            if not criteria:
                rules.append("marac.criterion.none")
                raise _Refused("marac.no_criterion")
            rules.extend(f"marac.criterion.{c.value}" for c in criteria)
        if consent.objection_to_health_sharing and _health_care(self.route.purpose, basis):
            if reason in SAFEGUARDING_REASONS:
                assert reason is not None
                rules.append(f"objection.health_sharing.overridden.{reason.value}")
            else:
                rules.append("objection.health_sharing.blocks")
                raise _Refused("objection.health_sharing")
        return basis, consent_basis

    def _encompass(
        self, recipient: str, role: AgencyRole, terms: PurposeTerms, rules: list[str]
    ) -> datetime:
        """Only a child's own school (or CSC, no school roll), by the next school day.

        A child is under ``terms.child_age_under`` (the statutory 18) on the incident date,
        whatever message carries them: a school never receives an adult as its pupil.
        """
        school = role is AgencyRole.SCHOOL
        under = terms.child_age_under
        rules.append(f"encompass.recipient.{role.value}")
        referral = self.referral
        if referral is None:
            assert isinstance(self.message, EncompassNotification)
            content = self.message.content
            occurred = content.occurred_at
            if not is_child(content.child_date_of_birth, occurred.date(), under=under):
                rules.append("encompass.not_a_child")
                raise _Refused("encompass.not_a_child")
        else:
            occurred = referral.incident.occurred_at
            scope = ShareScope.OWN_PUPIL if school else ShareScope.HOME_EDUCATED
            on = occurred.date()
            if not children_in_scope(referral.children, scope, recipient, on=on, under=None):
                code = "encompass.not_own_pupil" if school else "encompass.no_home_educated_child"
                rules.append(code)
                raise _Refused(code)
            if not children_in_scope(referral.children, scope, recipient, on=on, under=under):
                rules.append("encompass.not_a_child")
                raise _Refused("encompass.not_a_child")
        deadline = next_school_day_start(
            occurred, self.calendar, school=recipient if school else None
        )
        rules.append("encompass.deadline.next_school_day")
        if not self.calendar.covers(deadline.date()):
            rules.append("encompass.calendar.not_covered")
        if self.now > deadline:
            rules.append("encompass.deadline.passed")
        if isinstance(self.message, EncompassNotification) and (
            self.message.header.notify_by > deadline
        ):
            rules.append("encompass.notify_by.after_deadline")
        return deadline

    def _groups(
        self,
        grant: tuple[GroupShare, ...],
        basis: LawfulBasis,
        recipient: str,
        under: int,
        rules: list[str],
    ) -> tuple[tuple[GroupShare, ...], tuple[Withheld, ...]]:
        """The shares to disclose, classified fields without their condition withheld."""
        referral = self.referral
        if referral is None:
            return grant, ()  # a notification is the statutory content, whole, by its type
        consent = referral.consent
        assert consent is not None  # checked for the referral as a whole
        # Both must carry the condition: the agreement's basis (the partnership agreed to share
        # such data on it) and the referral's own (the sender relies on it for this referral).
        lacking = frozenset(c for c in DataClass if not (basis.carries(c) and consent.carries(c)))
        dash = referral.risk.dash
        version = dash.question_set if dash is not None else DEFAULT_QUESTION_SET
        out = []
        withheld: list[Withheld] = []
        for share in grant:
            value = referral.group(share.group)
            if value is None or value == ():
                rules.append(f"group.{share.label}.not_in_referral")
                continue
            # What is withheld depends on the grant and the bases only, never on the values,
            # so neither the disclosure nor the audit trail says there was anything to withhold.
            cut = share.withholding(lacking, version)
            for entry, data_class in cut.entries:
                if not any(w.data_class is data_class for w in withheld):
                    rules.append(f"{data_class.value}.withheld.no_condition")
                withheld.append(Withheld(share.group, entry, data_class))
                rules.append(withheld[-1].code)
            share = cut.share
            if share.keeps_nothing:
                rules.append(f"group.{share.label}.all_withheld")
                continue
            if not _entries(referral, share, recipient, under):
                rules.append(f"group.{share.label}.no_entries")
                continue
            out.append(share)
        return tuple(out), tuple(withheld)


def _accepted(
    agreement: Agreement,
    terms: PurposeTerms,
    basis: LawfulBasis | None,
    state: ConsentState,
    rules: list[str],
    kind: str = "",
) -> LawfulBasis:
    """The basis relied on, if the agreement has one for this case and accepts the consent state.

    ``kind`` is ``"statutory."`` for a notification's statutory basis; the rules name it so.
    """
    if basis is None:
        rules.append(f"agreement.{agreement.id}.lawful_basis.not_accepted")
        raise _Refused("lawful_basis.not_accepted")
    rules.append(f"lawful_basis.{kind}{basis.label}")
    if state not in terms.consent.states:
        rules.append(f"consent.{state.value}.not_accepted")
        raise _Refused("consent.state_not_accepted")
    rules.append(f"consent.{state.value}")
    return basis


def _entries(referral: Referral, share: GroupShare, recipient: str, under: int) -> bool:
    """Whether a scoped share keeps anything of the group for this recipient."""
    if share.group is FieldGroup.G4:
        on = referral.incident.occurred_at.date()
        return bool(
            children_in_scope(referral.children, share.scope, recipient, on=on, under=under)
        )
    if share.group is FieldGroup.G9 and referral.agencies_actions is not None:
        kept = agencies_in_scope(referral.agencies_actions, share.scope, recipient)
        return bool(kept.involved or kept.actions)
    return True
