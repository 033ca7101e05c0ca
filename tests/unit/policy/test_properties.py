"""Properties of the engine and redaction over generated referrals and agreement sets.

Whatever the referral and whatever the agreements: a recipient never receives a group (or a
field of a subset) its agreement does not allow for the purpose; a referral without a lawful
basis the agreements accept never produces a disclosure; an unsafe contact never appears in
anything disclosed; a special-category or criminal-offence field never leaves without its
condition in both the agreement's basis and the referral's.
"""

from __future__ import annotations

import re
from datetime import date
from random import Random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from broker.policy.admission import PolicyRefusal
from broker.policy.agreements import Agreement
from broker.policy.decide import Decision, decide
from broker.policy.redaction import redact
from schemas.classes import DataClass
from schemas.consent import ConsentState, OverrideReason
from schemas.dash import dash_question_classes
from schemas.disclosure import DisclosedReferral, Disclosure, GroupShare, LawfulBasis, ShareScope
from schemas.errors import UnknownAgency
from schemas.marac import marac_eligibility
from schemas.receipt import RecipientReceipt
from schemas.referral import FIELD_GROUPS, FieldGroup, Purpose, Referral, field_classes
from tests.unit.policy.cases import CALENDAR, FEDERATION, NOW, full_referral_data, strings

# Fast enough to run every time; no example database written into the working tree.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

AGENCIES = FEDERATION.ids

# Lawful bases a referral may name (each valid for schemas.consent.Consent).
REFERRAL_BASES: list[dict[str, str | None]] = [
    {
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_g",
        "dpa_condition": "dpa2018_sch1_para18",
        "statutory_gateway": "cda1998_s115",
    },
    {
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_g",
        "dpa_condition": "dpa2018_sch1_para18",
    },
    {
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_g",
        "dpa_condition": "dpa2018_sch1_para10",
    },
    {
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_h",
        "dpa_condition": "dpa2018_sch1_para2",
        "statutory_gateway": "hsca2012_s251b",
    },
    {
        "art6_basis": "art6_1_e",
        "art10_condition": "dpa2018_s10_5",
        "dpa_condition": "dpa2018_sch1_para10",
    },
    {"art6_basis": "art6_1_c", "statutory_gateway": "daa2021_s49a"},
    {"art6_basis": "art6_1_d"},
    {"art6_basis": "art6_1_e"},
    {"dpa_condition": "dpa2018_sch8_para4"},
]

# Lawful bases an agreement may rely on.
AGREEMENT_BASES: list[dict[str, str]] = [
    {"art6": "art6_1_e"},
    {"art6": "art6_1_e", "art9": "art9_2_g", "dpa": "dpa2018_sch1_para18"},
    {
        "art6": "art6_1_e",
        "art9": "art9_2_g",
        "dpa": "dpa2018_sch1_para18",
        "gateway": "cda1998_s115",
    },
    {"art6": "art6_1_e", "art9": "art9_2_h", "dpa": "dpa2018_sch1_para2"},
    {"art6": "art6_1_e", "art10": "dpa2018_s10_5", "dpa": "dpa2018_sch1_para10"},
    {"dpa": "dpa2018_sch8_para4"},
    {"gateway": "cda1998_s115"},
    {"art6": "art6_1_c", "gateway": "daa2021_s49a"},
]

SUBSETS: dict[str, dict[str, dict[str, Any]]] = {
    "G0": {"routing": {"fields": ["referral_id", "sender_agency", "purpose", "created_at"]}},
    "G1": {
        "identity_only": {"fields": ["given_name", "family_name", "date_of_birth"]},
        "with_pregnancy": {"fields": ["given_name", "pregnancy"]},
    },
    "G2": {"notes_only": {"fields": ["notes"]}},
    "G3": {
        "identity_and_orders": {"fields": ["given_name", "family_name", "bail_and_orders"]},
        "history_only": {"fields": ["criminal_history"]},
    },
    "G4": {
        "children_basic": {
            "fields": ["given_name", "family_name", "date_of_birth", "school_agency"]
        },
        "own_pupil": {
            "fields": ["given_name", "date_of_birth", "voice_of_child"],
            "scope": "own_pupil",
        },
        "home_educated": {"fields": ["given_name", "where"], "scope": "home_educated"},
    },
    "G5": {
        "when_where": {"fields": ["occurred_at", "location"]},
        "encompass": {"fields": ["occurred_at", "location", "summary"]},
        "injuries": {"fields": ["occurred_at", "injuries"]},
    },
    "G6": {
        "level_only": {"fields": ["level"]},
        "level_and_child_items": {
            "fields": ["level", "dash"],
            "dash_topics": ["child_contact", "pregnancy"],
        },
        "score_and_answers": {"fields": ["level", "dash_score", "dash"]},
        "health_items": {
            "fields": ["dash_score", "dash"],
            "dash_topics": ["depression", "pregnancy", "criminal_history"],
        },
    },
    "G7": {"access_needs": {"fields": ["disability", "first_language", "interpreter_needed"]}},
    "G8": {
        "basis_only": {
            "fields": ["art6_basis", "art9_condition", "dpa_condition", "statutory_gateway"]
        }
    },
    "G9": {"own_agency": {"fields": ["involved", "actions"], "scope": "own_agency"}},
    "G10": {"wishes_only": {"fields": ["victim_wishes"]}},
}
for _named in SUBSETS.values():
    for _subset in _named.values():
        _subset["note"] = "A generated subset for the property tests."

RISKS: list[dict[str, Any] | None] = [
    None,  # the sample's: high, DASH 16
    {"level": "standard", "dash_score": 2, "incidents_last_12_months": 1},
    {"level": "standard", "dash_score": 2, "incidents_last_12_months": 4},
    {"level": "high", "dash_score": 5, "professional_judgement": "Judged high (fictional)."},
]


PHONES = [f"01632 9600{n:02d}" for n in range(10)] + [f"07700 9000{n:02d}" for n in range(10)]
STATES = [s.value for s in ConsentState]
REASONS = [r.value for r in OverrideReason]


def referral_data(rnd: Random, *, with_basis: bool) -> dict[str, Any]:
    """A valid referral's data: random purpose, parties, groups, consent, contacts and risk."""
    data = full_referral_data()
    purpose = rnd.choice(list(Purpose))
    if purpose is Purpose.ENCOMPASS:  # otherwise refused on membership before any policy
        sender, others = "kelder-police", ["kelder-brook-primary", "kelder-csc"]
    else:
        sender = rnd.choice(["kelder-police", *AGENCIES])
        others = [a for a in AGENCIES if a != sender]
    data["header"].update(
        sender_agency=sender,
        purpose=purpose.value,
        recipients=rnd.sample(others, rnd.randint(1, min(4, len(others)))),
    )
    for group in ("perpetrator", "special_category", "agencies_actions", "wishes"):
        if rnd.random() < 0.3:
            del data[group]
    data["children"] = rnd.sample(data["children"], rnd.randint(0, len(data["children"])))
    risk = rnd.choice(RISKS)
    if risk is not None:
        data["risk"] = risk
    # Contact routes, some unsafe; an unsafe detail is sometimes quoted in free text too.
    phones = rnd.sample(PHONES, rnd.randint(1, 3))
    safe = [rnd.random() < 0.5 for _ in phones]
    routes = [
        {"kind": "phone", "detail": p, "safe": ok} for p, ok in zip(phones, safe, strict=True)
    ]
    data["safe_contact"] = {"routes": routes, "notes": "Ask for her by first name only."}
    unsafe = [p for p, ok in zip(phones, safe, strict=True) if not ok]
    if unsafe and rnd.random() < 0.6:
        u = unsafe[0]
        quoted = rnd.choice([u, u.replace(" ", ""), f"({u[:5]}) {u[6:]}"])
        data["safe_contact"]["notes"] = f"Never use {quoted}: he answers it."
        data["incident"]["summary"] = f"She rang from {quoted} before it was taken from her."
        for child in data["children"]:
            child["voice_of_child"] = f"Said mum's phone {quoted} was smashed."
    # G8: a lawful basis and a consent state, or none at all.
    if not with_basis:
        del data["consent"]
        return data
    state = rnd.choice(STATES)
    g8: dict[str, Any] = {**rnd.choice(REFERRAL_BASES)}
    if state == "not_required_statutory" and not g8.get("statutory_gateway"):
        g8["statutory_gateway"] = "cda1998_s115"
    g8.update(state=state, subject_informed=True)
    if state != "obtained":
        g8["override"] = {
            "decision_maker_id": "KP-1102",
            "decision_maker_role": "detective_sergeant",
            "reason": rnd.choice(REASONS),
            "justification": "Necessary and proportionate (fictional).",
            "subject_told": True,
            "legal_paragraph": "dpa2018_sch1_para18",
        }
    g8["objection_to_health_sharing"] = rnd.random() < 0.3
    data["consent"] = g8
    return data


def agreement_data(rnd: Random, i: int, referral: dict[str, Any]) -> dict[str, Any]:
    """An agreement that often, not always, fits the referral: its parties, purpose and G8."""
    header = referral["header"]
    g8 = referral.get("consent") or {}
    fitting = rnd.random() < 0.8  # mostly about this referral, so decisions get made
    agencies = set(rnd.sample(AGENCIES, rnd.randint(2, len(AGENCIES))))
    if fitting:
        agencies |= {header["sender_agency"], *rnd.sample(header["recipients"], 1)}
    parties = [{"agency": a, "role": FEDERATION.get(a).role.value} for a in sorted(agencies)]  # type: ignore[union-attr]
    roles = sorted({p["role"] for p in parties})
    names = {rnd.choice(list(Purpose)).value for _ in range(rnd.randint(1, 3))}
    if fitting:
        names.add(header["purpose"])
    purposes = []
    for purpose in sorted(names):
        recipients = {}
        for role in rnd.sample(roles, rnd.randint(len(roles) // 2, len(roles))):
            grant = {"G0": rnd.choice(["full", "routing"])}
            for group in list(FieldGroup)[1:]:
                choice = rnd.choice([None, "full", *SUBSETS[group.value]])
                if choice is not None:
                    grant[group.value] = choice
            recipients[role] = grant
        bases = rnd.sample(AGREEMENT_BASES, rnd.randint(0, 3))
        codes = {v for v in g8.values() if isinstance(v, str)}
        fits = [b for b in AGREEMENT_BASES if set(b.values()) <= codes]
        if fitting and fits and rnd.random() < 0.8:
            bases.append(rnd.choice(fits))
        states = rnd.sample(STATES, rnd.randint(1, len(STATES)))
        reasons = rnd.sample(REASONS, rnd.randint(0, len(REASONS)))
        if fitting and g8 and rnd.random() < 0.8:
            states.append(g8["state"])
            if "override" in g8:
                reasons.append(g8["override"]["reason"])
        purposes.append(
            {
                "purpose": purpose,
                "lawful_bases": list({str(b): b for b in bases}.values()),
                "consent": {
                    "states": sorted(set(states)),
                    "override_reasons": sorted(set(reasons)),
                },
                "marac_criterion_required": rnd.random() < 0.5,
                "recipients": recipients,
            }
        )
    return {
        "id": f"generated-{i}",
        "title": "Generated agreement",
        "version": "1",
        "in_force_from": rnd.choice([date(2025, 1, 1)] * 4 + [date(2027, 1, 1)]),
        "parties": parties,
        "retention": {"years": 1, "starts": "receipt", "then": "destroy"},
        "subsets": SUBSETS,
        "purposes": purposes,
    }


@st.composite
def cases(draw: st.DrawFn, *, with_basis: bool = True) -> tuple[Referral, tuple[Agreement, ...]]:
    """A generated referral and one to three agreements, most of them relevant to it."""
    # Each case is many small choices: a seeded Random makes them from one draw, which keeps
    # generation fast; hypothesis still picks (and reports, to reproduce) the seed.
    rnd = draw(st.randoms(use_true_random=True))
    data = referral_data(rnd, with_basis=with_basis)
    agreements = tuple(
        Agreement.model_validate(agreement_data(rnd, i, data))
        for i in range(draw(st.integers(1, 3)))
    )
    return Referral.model_validate(data), agreements


def decided(referral: Referral, agreements: tuple[Agreement, ...]) -> list[Decision] | None:
    """The decisions, or None when the referral is refused before any recipient is decided."""
    try:
        return decide(
            referral,
            FEDERATION,
            agreements=agreements,
            now=NOW,
            max_recipients=16,
            calendar=CALENDAR,
        )
    except (PolicyRefusal, UnknownAgency):
        return None


def filled(value: Any) -> set[str]:
    """The fields of a dumped group entry that hold something."""
    return {k for k, v in value.items() if v not in (None, [], (), {})}


@PROPERTY
@given(cases())
def test_a_recipient_never_gets_more_than_its_agreement_allows(
    case: tuple[Referral, tuple[Agreement, ...]],
) -> None:
    """Every disclosed group, field and entry is one the recipient's agreement grants."""
    referral, agreements = case
    purpose = referral.header.purpose
    consent = referral.consent
    assert consent is not None
    by_id = {a.id: a for a in agreements}
    for decision in decided(referral, agreements) or []:
        # reasons go on the sender's receipt: they must be receipt codes
        RecipientReceipt(agency=decision.recipient, status="queued", reasons=decision.reasons)
        if not decision.allowed:
            assert decision.groups == ()
            continue
        agreement = by_id[decision.agreement or ""]
        role = FEDERATION.get(decision.recipient).role  # type: ignore[union-attr]
        terms = agreement.terms(purpose)
        assert terms is not None
        assert agreement.party(referral.header.sender_agency) is not None
        assert agreement.party(decision.recipient) is not None
        granted = set(agreement.grant(purpose, role) or ())
        assert {_as_granted(s) for s in decision.groups} <= granted
        # the basis and consent the decision names are ones the agreement accepts
        assert decision.lawful_basis in terms.lawful_bases
        assert consent.state in terms.consent.states
        if consent.override is not None:
            assert consent.override.reason in terms.consent.override_reasons
        if terms.marac_criterion_required:
            threshold = FEDERATION.marac_escalation_threshold
            assert marac_eligibility(referral.risk, escalation_threshold=threshold).eligible
        out = redact(referral, decision)
        assert isinstance(out, DisclosedReferral)
        shares = {s.group: s for s in decision.groups}
        for group in FieldGroup:
            value = out.group(group)
            if group not in shares:
                assert value in (None, ()), f"{group} disclosed without a grant"
                continue
            share = shares[group]
            assert isinstance(value, BaseModel | tuple)
            models = value if isinstance(value, tuple) else (value,)
            entries = [m.model_dump() for m in models]
            if share.subset is not None:
                for entry in entries:
                    assert filled(entry) <= set(share.fields), f"{share.label} leaks"
            if group is FieldGroup.G4:
                kept = referral.children
                if share.scope is ShareScope.OWN_PUPIL:
                    kept = tuple(c for c in kept if c.school_agency == decision.recipient)
                if share.scope is ShareScope.HOME_EDUCATED:
                    kept = tuple(c for c in kept if c.home_educated)
                assert len(entries) == len(kept)
            if group is FieldGroup.G9 and share.scope is ShareScope.OWN_AGENCY:
                g9 = entries[0]
                assert {i["agency"] for i in g9.get("involved", [])} <= {decision.recipient}
                assert {a["by_agency"] for a in g9.get("actions", [])} <= {decision.recipient}
            if group is FieldGroup.G7:
                assert decision.lawful_basis is not None
                assert decision.lawful_basis.special_category


def _as_granted(share: GroupShare) -> GroupShare:
    """The share as the agreement granted it, before anything was withheld."""
    return share.model_copy(update={"withheld": ()})


def classified_in(out: DisclosedReferral) -> set[tuple[str, DataClass]]:
    """Every classified field or DASH answer a disclosed referral holds, with its class."""
    found: set[tuple[str, DataClass]] = set()
    for group, name in FIELD_GROUPS.items():
        value = out.group(group)
        models = value if isinstance(value, tuple) else (value,) if value is not None else ()
        for model in models:
            for field, data_class in field_classes(group).items():
                if getattr(model, field) not in (None, ()):
                    found.add((f"{name}.{field}", data_class))
    if out.risk is not None and out.risk.dash is not None:
        classes = dash_question_classes(out.risk.dash.question_set)
        found |= {(f"risk.dash.{q}", classes[q]) for q in out.risk.dash.answers if q in classes}
    return found


@PROPERTY
@given(cases())
def test_no_classified_field_leaves_without_its_condition(
    case: tuple[Referral, tuple[Agreement, ...]],
) -> None:
    """For every class, a special-category (UK GDPR Art 9(1)) or criminal-offence (Art 10, DPA
    2018 s10(5)) field or DASH answer is disclosed only when both the agreement's basis and the
    referral's basis carry the matching condition; what is withheld is only what lacks one."""
    referral, agreements = case
    consent = referral.consent
    assert consent is not None
    for decision in decided(referral, agreements) or []:
        if not decision.allowed:
            continue
        basis = decision.lawful_basis
        assert basis is not None
        assert decision.consent_basis is not None
        assert decision.retention is not None
        carried = {c for c in DataClass if basis.carries(c) and consent.carries(c)}
        out = redact(referral, decision)
        assert isinstance(out, DisclosedReferral)
        leaked = {(f, c) for f, c in classified_in(out) if c not in carried}
        assert leaked == set(), f"{decision.recipient} got {sorted(leaked)}"
        assert all(w.data_class not in carried for w in decision.withheld)
        # withheld DASH answers are never given away by the score
        g6 = next((s for s in decision.groups if s.group is FieldGroup.G6), None)
        if g6 is not None and g6.withheld_topics and out.risk is not None:
            assert out.risk.dash_score is None
        # the disclosure itself refuses what the engine must not send
        Disclosure(
            referral_id=referral.header.referral_id,
            sender_agency=referral.header.sender_agency,
            recipient_agency=decision.recipient,
            purpose=referral.header.purpose,
            agreement=decision.agreement or "",
            lawful_basis=basis,
            consent_basis=decision.consent_basis,
            groups=decision.groups,
            retention=decision.retention,
            referral=out,
        )


@PROPERTY
@given(cases(with_basis=False))
def test_a_referral_without_a_lawful_basis_never_produces_a_disclosure(
    case: tuple[Referral, tuple[Agreement, ...]],
) -> None:
    """No G8: refused as a whole (or before, on membership); never a decision to disclose."""
    referral, agreements = case
    assert decided(referral, agreements) is None


def relies_on(basis: LawfulBasis, referral: Referral) -> bool:
    g8 = referral.consent
    assert g8 is not None
    named = {
        g8.art6_basis,
        g8.art9_condition,
        g8.art10_condition,
        g8.dpa_condition,
        g8.statutory_gateway,
    }
    return set(basis.codes) <= {c.value for c in named if c is not None}


@PROPERTY
@given(cases())
def test_a_basis_no_agreement_accepts_never_produces_a_disclosure(
    case: tuple[Referral, tuple[Agreement, ...]],
) -> None:
    """If no agreement in force for the purpose accepts the referral's basis, nothing goes."""
    referral, agreements = case
    purpose = referral.header.purpose
    accepted = any(
        relies_on(basis, referral)
        for a in agreements
        if a.in_force(NOW.date()) and a.party(referral.header.sender_agency) is not None
        for basis in (a.terms(purpose).lawful_bases if a.terms(purpose) else ())  # type: ignore[union-attr]
    )
    got = decided(referral, agreements)
    if not accepted:
        assert got is None or not any(d.allowed for d in got)
    for decision in got or []:
        if decision.allowed:
            assert decision.lawful_basis is not None
            assert relies_on(decision.lawful_basis, referral)


@PROPERTY
@given(cases())
def test_an_unsafe_contact_never_appears_in_any_disclosure(
    case: tuple[Referral, tuple[Agreement, ...]],
) -> None:
    """No unsafe route, nor its number written any way, is in anything disclosed."""
    referral, agreements = case
    assert referral.safe_contact is not None
    unsafe = [r.detail for r in referral.safe_contact.routes if not r.safe]
    digits = [re.sub(r"\D", "", d) for d in unsafe]
    for decision in decided(referral, agreements) or []:
        if not decision.allowed:
            continue
        out = redact(referral, decision)
        assert isinstance(out, DisclosedReferral)
        if out.safe_contact is not None:
            assert all(r.safe for r in out.safe_contact.routes)
        text = strings(out.model_dump(mode="json"))
        squashed = [re.sub(r"\D", "", s) for s in text]
        for detail, number in zip(unsafe, digits, strict=True):
            assert not any(detail in s for s in text)
            assert not any(number in s for s in squashed)
