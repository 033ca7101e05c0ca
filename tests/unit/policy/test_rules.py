"""Every code the engine emits has a sentence and a citation, and the sentences are right."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from broker.policy.admission import ENCOMPASS_RECIPIENT_ROLES
from broker.policy.agreements import PurposeTerms
from broker.policy.decide import Decision
from broker.policy.rules import RULES, explain, explain_all
from broker.policy.subsets import explain_share
from schemas.consent import ConsentState, OverrideReason
from schemas.disclosure import GroupShare, LawfulBasis
from schemas.encompass import EncompassNotification
from schemas.legal import LEGAL_CODES
from schemas.marac import MaracCriterion
from schemas.referral import GROUP_MODELS, FieldGroup, Referral
from schemas.submission import decode_submission
from tests.samples import SAMPLES, personal_values
from tests.unit.policy.cases import (
    AGREEMENTS,
    consent,
    decisions,
    full_referral_data,
    notification,
    referral,
)
from tests.unit.policy.conftest import assert_explained

MESSAGES = sorted(p for p in SAMPLES.glob("*.json") if not p.name.endswith(".fhir.json"))


def bases(terms: PurposeTerms) -> list[LawfulBasis]:
    """The terms' lawful bases and notification basis (one, or one per recipient role)."""
    notification: Any = terms.notification_basis
    if isinstance(notification, Mapping):
        return [*terms.lawful_bases, *notification.values()]
    return [*terms.lawful_bases, *([notification] if notification is not None else [])]


def agreement_codes() -> Iterator[str]:
    """Every code the engine can build from the development agreements' ids, roles and bases."""
    for a in AGREEMENTS:
        yield f"agreement.{a.id}"
        yield f"agreement.{a.id}.lawful_basis.not_accepted"
        for terms in a.purposes:
            yield f"agreement.{a.id}.purpose.{terms.purpose.value}"
            for basis in bases(terms):
                yield f"lawful_basis.{basis.label}"
                yield f"lawful_basis.statutory.{basis.label}"
            for role in terms.recipients:
                yield f"agreement.{a.id}.role.{role.value}.granted"
                yield f"agreement.{a.id}.role.{role.value}.not_granted"
                for share in a.grant(terms.purpose, role) or ():
                    yield f"group.{share.label}.not_in_referral"
                    yield f"group.{share.label}.no_entries"


def enum_codes() -> Iterator[str]:
    """Every code the engine builds from a consent state, override reason or MARAC criterion."""
    for state in ConsentState:
        yield f"consent.{state.value}"
        yield f"consent.{state.value}.not_accepted"
    for reason in OverrideReason:
        yield f"override.{reason.value}"
        yield f"override.{reason.value}.accepted"
        yield f"override.{reason.value}.not_accepted"
        yield f"objection.health_sharing.overridden.{reason.value}"
    for criterion in MaracCriterion:
        yield f"marac.criterion.{criterion.value}"
    for role in ENCOMPASS_RECIPIENT_ROLES:
        yield f"encompass.recipient.{role.value}"


#: The fixed codes of the engine (decide's docstring), its refusals and its membership errors.
FIXED = (
    "agreement.none_covers_recipient",
    "agreement.none_for_purpose",
    "consent.override.incomplete",
    "consent.override.missing",
    "consent.state_not_accepted",
    "encompass.calendar.not_covered",
    "encompass.deadline.next_school_day",
    "encompass.deadline.passed",
    "encompass.no_home_educated_child",
    "encompass.not_a_child",
    "encompass.not_own_pupil",
    "encompass.notify_by.after_deadline",
    "encompass.recipient_role",
    "encompass.sender_not_police",
    "fan_out.exceeded",
    "lawful_basis.invalid",
    "lawful_basis.missing",
    "lawful_basis.not_accepted",
    "marac.criterion.none",
    "marac.no_criterion",
    "no-usable-encryption-key",
    "objection.health_sharing",
    "objection.health_sharing.blocks",
    "override.reason_not_accepted",
    "recipient.no_usable_encryption_key",
    "recipient.not_party",
    "recipient.self",
    "recipient.unknown",
    "role.not_granted",
    "safe_contact.unsafe_routes_removed",
    "schema.invalid",
    "sender.unknown",
    "special_category.withheld.no_condition",
)


def test_every_code_the_engine_can_build_has_a_sentence_and_a_citation() -> None:
    """Each fixed code, and each code built from the agreements and the enums, has its row."""
    every = [*FIXED, *agreement_codes(), *enum_codes()]
    assert_explained(every)
    for text in explain_all(every):
        assert text.text.endswith("."), text
        assert text.citation, text


def corpus() -> Iterator[Referral | EncompassNotification]:
    """The samples, and referrals that walk the engine's allowed and refused branches."""
    for path in MESSAGES:
        yield decode_submission(path.read_bytes())
    everyone = ["kelder-marac", "kelder-idva", "kelder-housing", "kelder-csc", "kelder-nhs"]
    for purpose in ("MARAC", "IDVA", "HOUSING", "CHILD_SAFEGUARDING", "HEALTH_SAFEGUARDING"):
        yield referral(purpose, everyone)
        for state in ("refused", "not_sought_unsafe", "cannot_be_given"):
            for reason in ("risk_to_children", "prevention_detection_of_crime"):
                yield referral(purpose, everyone, consent=consent(state, reason))
    objected = {**consent("refused", "prevention_detection_of_crime")}
    objected["objection_to_health_sharing"] = True
    yield referral("HEALTH_SAFEGUARDING", ["kelder-nhs"], consent=objected)
    yield referral("PERPETRATOR_MANAGEMENT", ["kelder-probation", "kelder-marac"])
    yield referral("ENCOMPASS", ["kelder-brook-primary"])
    yield referral("ENCOMPASS", ["kelder-csc"])
    yield notification(recipient="kelder-csc")


def test_every_code_decided_for_the_samples_and_the_cases_has_words() -> None:
    """Across the samples and every branch walked, no decision names a code without a sentence."""
    seen: list[Decision] = []
    for message in corpus():
        seen.extend(decisions(message))
    codes = [c for d in seen for c in (*d.reasons, *d.rules)]
    assert len(set(codes)) > 40  # the walk is not vacuous
    assert_explained(codes)


def test_the_sentences_hold_no_personal_data() -> None:
    """A sentence holds only what its code holds: no name, date of birth or address."""
    data = full_referral_data()
    shown = json.dumps([explain(c).as_record() for d in decisions(referral()) for c in d.rules])
    assert [v for v in personal_values(data) if v in shown] == []


def test_a_code_with_no_row_is_unknown_and_says_so() -> None:
    """A code nobody wrote a sentence for is marked unknown, with no citation."""
    made_up = explain("encompass.moon_phase")
    assert not made_up.known
    assert made_up.citation == ""
    assert "No sentence" in made_up.text


def test_each_row_is_one_sentence_with_a_citation() -> None:
    """Each row is one sentence ending in a full stop, and names what it rests on."""
    for rule in RULES:
        assert rule.text.endswith("."), rule.pattern
        assert rule.citation, rule.pattern
    assert len({r.pattern for r in RULES}) == len(RULES)


def test_the_slots_are_filled_from_the_code() -> None:
    """Agreement id, role, purpose and group label come from the code into the words."""
    granted = explain("agreement.kelder-idva-isa.role.idva.granted")
    assert "kelder-idva-isa" in granted.text
    assert "an IDVA service" in granted.text
    assert granted.citation.startswith("agreement kelder-idva-isa, recipients idva")
    covers = explain("agreement.kelder-encompass.purpose.ENCOMPASS")
    assert "Operation Encompass" in covers.text
    assert covers.citation == "agreement kelder-encompass, purposes ENCOMPASS"
    assert (
        "G4 (children and dependants), subset own_pupil"
        in explain("group.G4.own_pupil.no_entries").text
    )


def test_a_lawful_basis_cites_every_code_it_names() -> None:
    """Art 6, Art 9, the DPA 2018 paragraph and the gateway are each cited, in that order."""
    got = explain("lawful_basis.art6_1_e+art9_2_g+dpa2018_sch1_para18+cda1998_s115")
    assert got.citation == (
        "UK GDPR Art 6(1)(e); UK GDPR Art 9(2)(g); DPA 2018 s10(3), Sch 1 para 18; "
        "Crime and Disorder Act 1998 s115"
    )
    assert "safeguarding of children and of individuals at risk" in got.text
    assert set(LEGAL_CODES) >= {"daa2021_s49a", "hsca2012_s251b", "dpa2018_sch8_para4"}


def test_s115_is_a_power_to_share_not_a_duty() -> None:
    """Crime and Disorder Act 1998 s115 reads as a power, never as a duty to share."""
    text = explain("lawful_basis.art6_1_e+cda1998_s115").text
    assert "power (not a duty)" in text
    assert "duty to share to prevent" not in text


def test_an_objection_disapplies_the_s251b_duty() -> None:
    """HSCA 2012 s251B: the duty to share for care does not apply when the person objects."""
    blocks = explain("objection.health_sharing.blocks")
    assert "objected" in blocks.text
    assert "does not apply" in blocks.text
    assert "Health and Social Care Act 2012 s251B" in blocks.citation
    overridden = explain("objection.health_sharing.overridden.risk_to_children")
    assert "safeguarding override" in overridden.text
    care = explain("lawful_basis.art6_1_e+art9_2_h+dpa2018_sch1_para2+hsca2012_s251b")
    assert "does not apply when the person objects" in care.text


def test_caldicott_7_backs_sharing_without_consent_and_8_consent() -> None:
    """Caldicott 7 (duty to share) stands behind an override; 8 (inform) behind consent."""
    assert "Caldicott principle 7" in explain("consent.refused").citation
    assert "Caldicott principle 7" in explain("consent.withdrawn").citation
    assert "Caldicott principle 8" in explain("consent.obtained").citation
    assert "para 18(2)(a)" in explain("consent.cannot_be_given").citation
    assert "para 18(2)(c)" in explain("consent.not_sought_unsafe").citation
    assert "para 18(2)(c)" in explain("override.prejudice_protection").citation


def test_encompass_rests_on_s49a_for_schools_and_the_safeguarding_basis_otherwise() -> None:
    """DAA 2021 s49A: schools, whether or not officers attended; a child with no school: CSC."""
    school = explain("encompass.recipient.school")
    assert school.citation == "Domestic Abuse Act 2021 s49A"
    assert "designated safeguarding lead" in school.text
    csc = explain("encompass.recipient.childrens_social_care")
    assert "s49A" not in csc.citation
    assert "Children Act 2004 s11" in csc.citation
    assert "Sch 1 para 18" in csc.citation
    assert "whether or not officers attended" in explain("encompass.deadline.next_school_day").text
    assert "under 18" in explain("encompass.not_a_child").text


def test_marac_criteria_read_as_safelives_states_them() -> None:
    """MARAC: 14 or more 'yes' answers, professional judgement, escalation of 3+ in 12 months."""
    assert "14 or more 'yes'" in explain("marac.criterion.visible_high_risk").text
    assert "recorded why" in explain("marac.criterion.professional_judgement").text
    escalation = explain("marac.criterion.potential_escalation").text
    assert "3 or more" in escalation
    assert "12 months" in escalation


def test_a_subset_is_spelt_out_from_its_agreement() -> None:
    """G6.level_only holds the level alone; G4.own_pupil its fields, scope and note."""
    health = next(a for a in AGREEMENTS if a.id == "kelder-health-safeguarding-isa")
    level = explain_share(health.share(FieldGroup.G6, "level_only"), health)
    assert (level.label, level.fields, level.scope) == ("G6.level_only", ("level",), None)
    assert level.note is not None
    assert "risk level only" in level.note
    encompass = next(a for a in AGREEMENTS if a.id == "kelder-encompass")
    pupil = explain_share(encompass.share(FieldGroup.G4, "own_pupil"), encompass)
    assert pupil.fields == encompass.subsets[FieldGroup.G4]["own_pupil"].fields
    assert "voice_of_child" in pupil.fields
    assert "school_agency" not in pupil.fields
    assert pupil.scope == "own_pupil"
    assert pupil.scope_text == "only the children who are pupils of the receiving school"
    assert pupil.note == encompass.subsets[FieldGroup.G4]["own_pupil"].note
    assert pupil.as_record()["group_name"] == "children and dependants"


def test_a_subset_of_dash_answers_names_its_topics() -> None:
    """G6.level_and_child_items lists the DASH topics whose answers it keeps."""
    csc = next(a for a in AGREEMENTS if a.id == "kelder-child-safeguarding-isa")
    items = explain_share(csc.share(FieldGroup.G6, "level_and_child_items"), csc)
    assert items.fields == ("level", "dash")
    assert "child_contact" in items.dash_topics


def test_a_whole_group_lists_every_field_of_the_group() -> None:
    """A whole group has no subset and no note; its fields are all the group's fields."""
    whole = explain_share(GroupShare(group=FieldGroup.G2))
    assert whole.subset is None
    assert whole.note is None
    assert whole.fields == tuple(GROUP_MODELS[FieldGroup.G2].model_fields)
    assert whole.fields == ("routes", "notes")


@pytest.mark.parametrize("code", [r.pattern for r in RULES if "<" not in r.pattern])
def test_an_exact_code_gets_its_own_row(code: str) -> None:
    """A code with a row of its own is never explained by a pattern row."""
    row = next(r for r in RULES if r.pattern == code)
    assert explain(code).citation == row.citation
