"""Audit events: RFC 8785 canonical bytes, the fields each type may carry, and pseudonyms.

The canonicalisation vectors are from the RFC 8785 authors' reference test data,
github.com/cyberphone/json-canonicalization, testdata/input and testdata/output (values.json
is the example of RFC 8785 §3.2.2; weird.json and structures.json exercise the property sort
of §3.2.3 on UTF-16 code units and nested structures).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest
import rfc8785

from broker.policy.decide import Decision
from schemas.audit import (
    AuditEvent,
    AuditEventType,
    acknowledged,
    agreement_changed,
    delivered,
    disclosed,
    key_rotated,
    overdue,
    submission_events,
)
from schemas.consent import ConsentState, OverrideReason
from schemas.errors import SchemaError
from schemas.pseudonyms import (
    name_identifier,
    nhs_identifier,
    person_pseudonyms,
    pseudonym,
    subject_pseudonyms,
)
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import FieldGroup, Purpose, Referral
from tests.samples import sample
from tests.unit.audit.conftest import NOW, SECRET

RFC8785_VECTORS = [
    (
        '{"numbers": [1E30, 4.50, 333333333.33333329, 2e-3, 0.000000000000000000000000001],'
        ' "escaping": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}',
        '{"escaping":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/","literals":[null,true,false],'
        '"numbers":[1e+30,4.5,333333333.3333333,0.002,1e-27]}',
    ),
    (
        '{"\\u20ac": "Euro Sign", "1": "One", "\\u0080": "Control\\u007f",'
        ' "\\ud83d\\ude02": "Smiley", "\\u00f6": "Latin Small Letter O With Diaeresis",'
        ' "\\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}',
        '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f602":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    ),
    (
        '{"1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0}, "10": { }, "": "empty", "a": { },'
        ' "111": [ { } ], "A": { }}',
        '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}}',
    ),
]


@pytest.mark.parametrize(("given", "canonical"), RFC8785_VECTORS)
def test_canonical_json_matches_the_rfc8785_reference_vectors(given: str, canonical: str) -> None:
    """The canonicaliser turns each reference input into its reference output exactly."""
    assert rfc8785.dumps(json.loads(given)) == canonical.encode("utf-8")


def _referral() -> Referral:
    return Referral.model_validate(sample("referral-consent-refused.json"))


def _events() -> tuple[AuditEvent, ...]:
    referral = _referral()
    decisions = [
        Decision(r, allowed=i == 0, reasons=("agreement:x",))
        for i, r in enumerate(referral.header.recipients)
    ]
    return submission_events(referral, decisions, secret=SECRET, at=NOW, request_id="req-1")


def test_events_are_canonical_and_round_trip() -> None:
    """Each event's bytes are RFC 8785 of its JSON, and parse back to the same event."""
    for event in _events():
        data = event.canonical()
        assert data == rfc8785.dumps(json.loads(data))
        assert AuditEvent.from_canonical(data) == event


def test_non_canonical_bytes_are_refused() -> None:
    """The same event with other spacing or key order is not accepted as a leaf."""
    data = _events()[0].canonical()
    spaced = json.dumps(json.loads(data), indent=1).encode()
    with pytest.raises(SchemaError, match="canonical"):
        AuditEvent.from_canonical(spaced)


def test_times_are_normalised_to_utc() -> None:
    """The same instant in another zone gives the same bytes."""
    zone = timezone(timedelta(hours=5))
    here = key_rotated("kelder-idva", ["a" * 43], at=NOW, event_id=uuid.UUID(int=1))
    there = key_rotated(
        "kelder-idva", ["a" * 43], at=NOW.astimezone(zone), event_id=uuid.UUID(int=1)
    )
    assert here.canonical() == there.canonical()
    assert b'"at":"2026-11-26T09:00:00Z"' in here.canonical()


def test_submission_gives_received_decided_and_one_event_per_recipient() -> None:
    """received, decided, then disclosed or refused for each recipient in order."""
    events = _events()
    referral = _referral()
    types = [e.type for e in events]
    assert types[:2] == [AuditEventType.RECEIVED, AuditEventType.DECIDED]
    assert types[2] is AuditEventType.DISCLOSED
    assert all(t is AuditEventType.REFUSED for t in types[3:])
    assert [e.recipient for e in events[2:]] == list(referral.header.recipients)
    shared = events[2]
    assert shared.consent_state is ConsentState.REFUSED
    assert shared.override_reason is OverrideReason.RISK_TO_CHILDREN
    assert shared.lawful_basis  # names its lawful basis


def test_fields_the_type_does_not_use_are_refused() -> None:
    """A key_rotated event may not carry subjects; a disclosed one must carry field groups."""
    rotated = key_rotated("kelder-idva", ["a" * 43], at=NOW).jsonable()
    with pytest.raises(ValueError, match="has no subjects"):
        AuditEvent.model_validate({**rotated, "subjects": [pseudonym(SECRET, "nhs:1")]})
    shared = _events()[2].jsonable()
    del shared["field_groups"]
    with pytest.raises(ValueError, match="needs field_groups"):
        AuditEvent.model_validate(shared)


def test_free_text_cannot_enter_an_event() -> None:
    """Reason codes and agreement ids are codes: a sentence is a programming mistake."""
    with pytest.raises(RuntimeError, match="pattern"):
        key_rotated("kelder-idva", ["a" * 43], at=NOW, reasons=["Jane Doe asked"])
    with pytest.raises(RuntimeError, match="pattern"):
        agreement_changed("the MARAC agreement", b"...", at=NOW)


def test_a_disclosure_without_a_lawful_basis_cannot_be_recorded() -> None:
    """A referral with no G8 cannot yield a disclosed event: it must be refused instead."""
    data = sample()
    del data["consent"]
    referral = Referral.model_validate(data)
    with pytest.raises(SchemaError) as exc:
        disclosed(referral, recipient="kelder-idva", field_groups=(), secret=SECRET, at=NOW)
    assert exc.value.problems[0].field == "consent"


# --- pseudonyms -------------------------------------------------------------------------------


def test_identifier_normalisation() -> None:
    """Spacing, case, accents and punctuation do not change the identifier."""
    assert nhs_identifier("999 000 0018") == nhs_identifier("9990000018") == "nhs:9990000018"
    dob = date(1991, 4, 17)
    assert name_identifier("Zoë-Ann Mary", "O'Brien", dob) == name_identifier(
        "ZOEANN", "obrien", dob
    )
    assert name_identifier("Ann", "de la Cruz", dob) == "name:delacruz|ann|1991-04-17"


@pytest.mark.parametrize("bad", ["999 000 0019", "99900000", "999-000-001X"])
def test_invalid_nhs_numbers_are_refused(bad: str) -> None:
    """A wrong check digit, length or character is refused rather than hashed."""
    with pytest.raises(ValueError, match="NHS number"):
        nhs_identifier(bad)


def test_pseudonyms_depend_on_the_secret_and_the_identifier_kind() -> None:
    """Another secret gives other pseudonyms; a short secret is refused."""
    ident = nhs_identifier("9990000018")
    assert pseudonym(SECRET, ident) != pseudonym(bytes(32), ident)
    assert len(pseudonym(SECRET, ident)) == 43
    with pytest.raises(ValueError, match="32 bytes"):
        pseudonym(b"short", ident)


def test_the_officers_identifiers_give_the_referrals_pseudonyms() -> None:
    """Each identifier of the victim, a child and the perpetrator finds them in the referral."""
    data = sample()
    referral = Referral.model_validate(data)
    carried = set(subject_pseudonyms(referral, SECRET))
    victim, child, perp = data["victim"], data["children"][0], data["perpetrator"]
    dob = date.fromisoformat(victim["date_of_birth"])
    alias_given, alias_family = victim["aliases"][0].split(" ", 1)
    lookups = [
        person_pseudonyms(SECRET, nhs_number=victim["nhs_number"].replace("", " ").strip()),
        person_pseudonyms(
            SECRET,
            given_name=victim["given_name"].upper(),
            family_name=victim["family_name"].lower(),
            date_of_birth=dob,
        ),
        person_pseudonyms(
            SECRET, given_name=alias_given, family_name=alias_family, date_of_birth=dob
        ),
        person_pseudonyms(
            SECRET,
            given_name=child["given_name"],
            family_name=child["family_name"],
            date_of_birth=date.fromisoformat(child["date_of_birth"]),
        ),
        person_pseudonyms(
            SECRET,
            given_name=perp["given_name"],
            family_name=perp["family_name"],
            date_of_birth=date.fromisoformat(perp["date_of_birth"]),
        ),
    ]
    for found in lookups:
        assert set(found) <= carried


def test_a_name_without_a_date_of_birth_finds_nobody() -> None:
    """A name alone is refused: it would match strangers."""
    with pytest.raises(ValueError, match="NHS number"):
        person_pseudonyms(SECRET, given_name="Testina", family_name="Fictitia")


def test_events_are_stable_for_equal_facts() -> None:
    """The same facts given in another order give the same bytes (no hidden ordering)."""
    referral = _referral()
    one, two = (
        disclosed(
            referral,
            recipient="kelder-idva",
            field_groups=groups,
            secret=SECRET,
            at=NOW,
            event_id=uuid.UUID(int=7),
        )
        for groups in (
            (FieldGroup.G10, FieldGroup.G1, FieldGroup.G0),
            (FieldGroup.G0, FieldGroup.G1, FieldGroup.G10),
        )
    )
    assert one.canonical() == two.canonical()
    assert b'"field_groups":["G0","G1","G10"]' in one.canonical()


@dataclass(frozen=True)
class _Share:
    label: str


@dataclass(frozen=True)
class _Basis:
    codes: tuple[str, ...]


@dataclass(frozen=True)
class _Consent:
    state: ConsentState
    override_reason: OverrideReason | None


@dataclass(frozen=True)
class _AgreedDecision:
    """The shape of broker.policy.decide.Decision under sharing agreements."""

    recipient: str
    allowed: bool
    reasons: tuple[str, ...]
    groups: tuple[_Share, ...] = ()
    lawful_basis: _Basis | None = None
    consent_basis: _Consent | None = None
    rules: tuple[str, ...] = ()
    agreement: str | None = None
    deadline: datetime | None = None


def test_events_record_what_the_agreement_decided() -> None:
    """Groups with subsets, the basis relied on, rules and agreement come from the decision."""
    referral = _referral()
    allowed = _AgreedDecision(
        recipient="kelder-idva",
        allowed=True,
        reasons=("agreement.kelder-isa", "override.risk_to_children"),
        groups=(_Share("G4.children_basic"), _Share("G1"), _Share("G10")),
        lawful_basis=_Basis(("art6_1_e", "art9_2_g", "dpa2018_sch1_para18")),
        consent_basis=_Consent(ConsentState.REFUSED, OverrideReason.RISK_TO_CHILDREN),
        rules=(
            "agreement.kelder-isa.purpose.MARAC",
            "lawful_basis.art6_1_e+art9_2_g+dpa2018_sch1_para18",
        ),
        agreement="kelder-isa",
        deadline=NOW + timedelta(hours=3),
    )
    refused_one = _AgreedDecision(
        recipient="kelder-marac",
        allowed=False,
        reasons=("role.not_granted",),
        rules=("agreement.kelder-isa.role.marac_coordinator.not_granted",),
        agreement="kelder-isa",
    )
    events = submission_events(referral, [allowed, refused_one], secret=SECRET, at=NOW)
    shared, refusal = events[2], events[3]
    assert shared.field_groups == ("G1", "G4.children_basic", "G10")
    assert list(shared.lawful_basis) == [
        "art6_1_e",
        "art9_2_g",
        "dpa2018_sch1_para18",
    ]
    assert shared.rules == allowed.rules
    assert shared.agreement == "kelder-isa"
    assert shared.due_at == NOW + timedelta(hours=3)
    assert refusal.rules == refused_one.rules
    assert refusal.reasons == ("role.not_granted",)
    for event in events:
        assert AuditEvent.from_canonical(event.canonical()) == event


def test_the_fast_canonical_check_agrees_with_rfc8785(feed: list[tuple[int, bytes]]) -> None:
    """On every sample event the verification path's encoder gives the RFC 8785 bytes."""
    for _, data in feed:
        event = AuditEvent.from_canonical(data)
        assert event._canonical_fast() == rfc8785.dumps(event.jsonable()) == data


# Every builder's canonical bytes on fixed facts, as they were before the builders became one
# table-driven ``_event``: the Merkle leaves of a log written then must still verify now.
_PINNED = [
    (
        b'{"agreement":"kelder-isa","at":"2026-11-26T09:00:00Z","consent_state":"obtained",'
        b'"due_at":"2026-11-26T12:00:00Z","event_id":"00000000-0000-0000-0000-000000000001",'
        b'"field_groups":["G1","G4.children_basic"],"format":"cairn-audit/1",'
        b'"lawful_basis":["art6_1_e","art9_2_g","cda1998_s115","dpa2018_sch1_para18"],'
        b'"message_id":"00000000-0000-0000-0000-000000000003","purpose":"MARAC",'
        b'"recipient":"kelder-idva","request_id":"req-1",'
        b'"rules":["agreement.kelder-isa.purpose.MARAC"],"sender":"kelder-police",'
        b'"subjects":["7GNAcvVwsdvgv_Qmiv5ENZLoQQzbNf2-EN03nQl9rTg",'
        b'"Astd-l3C6B9vn-Xs97VXsUAA5Xl8ykPV1yZg2qrHrCs",'
        b'"GIJPMDmy7LZyP9yWtVzgSjksD53cPJwM_SFAfTDayJs",'
        b'"en8wa9_V1j-fHlXcoRbL2hEx1UIeDnBSt9ffW7DAHaQ",'
        b'"lykHw-6sHMfgXZXcQY2Xjz1wOjuMbE5MinvlUZuRuDQ",'
        b'"mgNYmImrMrMiMw1BWHSyUDDECOAmsvgPHyMnz9Kt3JE"],"type":"disclosed"}'
    ),
    (
        b'{"at":"2026-11-26T09:00:00Z","event_id":"00000000-0000-0000-0000-000000000001",'
        b'"format":"cairn-audit/1","message_id":"00000000-0000-0000-0000-000000000002",'
        b'"purpose":"MARAC","recipient":"kelder-idva","sender":"kelder-police",'
        b'"type":"delivered"}'
    ),
    (
        b'{"at":"2026-11-26T09:00:00Z","event_id":"00000000-0000-0000-0000-000000000001",'
        b'"format":"cairn-audit/1","message_id":"00000000-0000-0000-0000-000000000002",'
        b'"reasons":["schema_version"],"recipient":"kelder-idva","status":"rejected",'
        b'"type":"acknowledged"}'
    ),
    (
        b'{"at":"2026-11-27T09:00:00Z","due_at":"2026-11-26T09:00:00Z",'
        b'"event_id":"00000000-0000-0000-0000-000000000001","format":"cairn-audit/1",'
        b'"message_id":"00000000-0000-0000-0000-000000000002","reasons":["not_acknowledged"],'
        b'"recipient":"kelder-idva","type":"overdue"}'
    ),
    (
        b'{"agency":"kelder-idva","at":"2026-11-26T09:00:00Z",'
        b'"event_id":"00000000-0000-0000-0000-000000000001","format":"cairn-audit/1",'
        b'"kids":["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],"type":"key_rotated"}'
    ),
    (
        b'{"agreement":"kelder-isa",'
        b'"agreement_digest":"0e72d5f1594a0f0013bb17d16099df7576da4c13932b89301ea39a45fa6950f8",'
        b'"at":"2026-11-26T09:00:00Z","event_id":"00000000-0000-0000-0000-000000000001",'
        b'"format":"cairn-audit/1","type":"agreement_changed"}'
    ),
]


def test_canonical_bytes_of_each_builder_are_pinned() -> None:
    """disclosed, delivered, acknowledged, overdue, key_rotated, agreement_changed: fixed bytes."""
    data = sample("referral-high-risk.json")
    data["header"]["referral_id"] = str(uuid.UUID(int=3))
    referral = Referral.model_validate(data)
    one, message_id = uuid.UUID(int=1), uuid.UUID(int=2)
    ack = Acknowledgement(
        referral_id=message_id,
        agency="kelder-idva",
        status=AcknowledgementStatus.REJECTED,
        reasons=("schema_version",),
        acknowledged_at=NOW,
    )
    events = [
        disclosed(
            referral,
            recipient="kelder-idva",
            field_groups=("G1", "G4.children_basic"),
            secret=SECRET,
            at=NOW,
            rules=("agreement.kelder-isa.purpose.MARAC",),
            agreement="kelder-isa",
            due_at=NOW + timedelta(hours=3),
            request_id="req-1",
            event_id=one,
        ),
        delivered(
            message_id,
            recipient="kelder-idva",
            at=NOW,
            sender="kelder-police",
            purpose=Purpose.MARAC,
            event_id=one,
        ),
        acknowledged(ack, event_id=one),
        overdue(
            message_id,
            recipient="kelder-idva",
            due_at=NOW,
            at=NOW + timedelta(days=1),
            reasons=("not_acknowledged",),
            event_id=one,
        ),
        key_rotated("kelder-idva", ["A" * 43], at=NOW, event_id=one),
        agreement_changed("kelder-isa", b"agreement: v2", at=NOW, event_id=one),
    ]
    assert [e.canonical() for e in events] == _PINNED


def test_an_override_event_names_who_decided_and_on_what_paragraph() -> None:
    """Under an override, disclosed and refused carry the role, staff id and legal paragraph."""
    events = _events()
    for event in events[2:]:
        assert event.override_reason is OverrideReason.RISK_TO_CHILDREN
        assert event.override_by_role == "named_nurse_safeguarding_adults"
        assert event.override_by_id == "NHS-SG-0001"
        assert event.override_paragraph == "dpa2018_sch1_para18"
        assert b'"override_by_id":"NHS-SG-0001"' in event.canonical()
    assert events[0].override_by_id is None  # received: no legal footing
    assert events[1].override_by_id is None  # decided: the per-recipient events carry it


@dataclass(frozen=True)
class _Paragraphed(_Consent):
    """A consent basis that names the override's paragraph, as ``ConsentBasis`` does."""

    override_paragraph: str | None


def test_the_paragraph_the_policy_relied_on_is_the_one_recorded() -> None:
    """A decision naming the override's paragraph puts that one in the event."""
    decision = _AgreedDecision(
        recipient="kelder-idva",
        allowed=True,
        reasons=(),
        lawful_basis=_Basis(("art6_1_e", "cda1998_s115")),
        consent_basis=_Paragraphed(
            ConsentState.REFUSED, OverrideReason.RISK_TO_CHILDREN, "cda1998_s115"
        ),
    )
    shared = submission_events(_referral(), [decision], secret=SECRET, at=NOW)[2]
    assert shared.override_paragraph == "cda1998_s115"
    assert shared.override_by_id == "NHS-SG-0001"


def test_an_override_decision_maker_goes_with_a_reason_and_is_never_a_name() -> None:
    """A staff id without an override reason is refused, and so is a name as a staff id."""
    plain = disclosed(
        Referral.model_validate(sample()),
        recipient="kelder-idva",
        field_groups=("G1",),
        secret=SECRET,
        at=NOW,
    ).jsonable()
    with pytest.raises(ValueError, match="go with its reason"):
        AuditEvent.model_validate({**plain, "override_by_id": "KP-1102"})
    shared = _events()[2].jsonable()
    with pytest.raises(ValueError, match="never their name"):
        AuditEvent.model_validate({**shared, "override_by_id": "JaneDoe"})
