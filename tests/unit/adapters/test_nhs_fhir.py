"""NHS adapter: FHIR R4 bundles in and out, validated with fhir.resources, errors as FHIR paths."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle

from adapters.client import Submitted
from adapters.nhs import bundle_to_referral, disclosure_to_bundle, parse_bundle, referral_to_bundle
from adapters.nhs.cli import nhs
from adapters.nhs.codes import NHS_NUMBER_SYSTEM
from broker.federation import load_federation
from broker.policy.agreements import load_agreements
from broker.policy.decide import decide
from schemas.disclosure import DisclosedReferral, Disclosure
from schemas.errors import SchemaError
from schemas.receipt import Receipt
from schemas.referral import Referral
from tests.samples import FEDERATION_DIR

SAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "federation" / "samples"
FHIR_SAMPLES = sorted(SAMPLES.glob("nhs-*.fhir.json"))
REFERRAL_SAMPLES = sorted(SAMPLES.glob("referral-*.json"))


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def refused(bundle: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SchemaError) as caught:
        bundle_to_referral(bundle)
    return {p.field: p.problem for p in caught.value.problems}


def consent_refused() -> dict[str, Any]:
    return load(SAMPLES / "nhs-referral-consent-refused.fhir.json")


def entry(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def test_there_are_fhir_samples_for_three_cases() -> None:
    """FHIR samples exist for the medium-risk, professional-judgement and refused cases."""
    assert [p.name for p in FHIR_SAMPLES] == [
        "nhs-referral-consent-refused.fhir.json",
        "nhs-referral-medium-risk.fhir.json",
        "nhs-referral-professional-judgement.fhir.json",
    ]


@pytest.mark.parametrize("path", FHIR_SAMPLES, ids=lambda p: p.name)
def test_fhir_round_trip_keeps_every_mapped_element(path: Path) -> None:
    """FHIR -> referral -> FHIR gives back the sample, element for element."""
    original = load(path)
    referral = bundle_to_referral(original)
    assert referral_to_bundle(referral) == original


@pytest.mark.parametrize("path", FHIR_SAMPLES, ids=lambda p: p.name)
def test_fhir_sample_maps_to_the_cairn_sample(path: Path) -> None:
    """Each FHIR sample carries the same referral as its Cairn JSON twin."""
    twin = SAMPLES / path.name.removeprefix("nhs-").replace(".fhir.json", ".json")
    assert parse_bundle(path.read_bytes()) == Referral.model_validate_json(twin.read_bytes())


def test_inbound_maps_uk_core_identifiers_and_dash() -> None:
    """The NHS number comes from the UK Core system; DASH answers from the QuestionnaireResponse."""
    referral = bundle_to_referral(consent_refused())
    assert referral.victim.nhs_number == "9990000042"
    assert referral.risk.dash is not None
    assert len(referral.risk.dash.answers) == 24
    assert referral.risk.dash_score == 14
    assert referral.consent is not None
    assert referral.consent.override is not None
    assert referral.consent.override.reason == "risk_to_children"
    assert [r.safe for r in referral.safe_contact.routes] == [True, False]  # type: ignore[union-attr]


@pytest.mark.parametrize("path", REFERRAL_SAMPLES, ids=lambda p: p.name)
def test_every_emitted_bundle_validates_with_fhir_resources(path: Path) -> None:
    """Each bundle the adapter emits (all referral samples) validates as an R4 Bundle."""
    referral = Referral.model_validate_json(path.read_bytes())
    emitted = referral_to_bundle(referral)
    model = Bundle.model_validate(emitted)
    assert model.type == "collection"
    kinds = [e.resource.get_resource_type() for e in model.entry or []]  # type: ignore[union-attr]
    assert kinds[0] == "Patient"
    assert "ServiceRequest" in kinds
    assert kinds[-1] == "RiskAssessment"


def test_disclosure_to_bundle_files_what_the_trust_received() -> None:
    """A disclosure to the NHS trust becomes a valid bundle that maps back to its referral."""
    referral = Referral.model_validate_json((SAMPLES / "referral-high-risk.json").read_bytes())
    # The basis fields come from a real policy decision; the referral is sent whole so that
    # every mapped element can be checked on the way back.
    decision = next(
        d
        for d in decide(
            referral,
            load_federation(FEDERATION_DIR),
            agreements=load_agreements(FEDERATION_DIR / "agreements"),
            now=referral.header.created_at,
            max_recipients=16,
        )
        if d.allowed
    )
    assert decision.lawful_basis
    assert decision.consent_basis
    assert decision.retention
    assert decision.agreement
    disclosure = Disclosure(
        referral_id=referral.header.referral_id,
        sender_agency="kelder-police",
        recipient_agency="kelder-nhs",
        purpose=referral.header.purpose,
        agreement=decision.agreement,
        lawful_basis=decision.lawful_basis,
        consent_basis=decision.consent_basis,
        groups=decision.groups,
        retention=decision.retention,
        referral=DisclosedReferral.whole(referral),
    )
    bundle = disclosure_to_bundle(disclosure)
    Bundle.model_validate(bundle)
    patient = entry(bundle, "Patient")
    assert patient["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}]
    # the unsafe landline is never a telecom a system could dial
    assert [t["value"] for t in patient["telecom"]] == ["07700 900001"]
    assert bundle_to_referral(bundle) == referral
    assert json.dumps(bundle)  # JSON-ready


def test_malformed_fhir_is_refused_with_its_fhir_path() -> None:
    """A bundle that is not valid FHIR is refused naming the element's FHIRPath."""
    bundle = consent_refused()
    entry(bundle, "Patient")["birthDate"] = "21/06/1995"
    entry(bundle, "ServiceRequest").pop("intent")
    found = refused(bundle)
    assert "Bundle.entry[0].resource.birthDate" in found
    assert "Bundle.entry[2].resource.intent" in found


def test_unknown_resource_type_is_refused_not_dropped() -> None:
    """A resource outside the mapping is refused at its resourceType, never silently dropped."""
    bundle = consent_refused()
    bundle["entry"].append({"resource": {"resourceType": "Observation", "status": "final"}})
    assert "Bundle.entry[6].resource.resourceType" in refused(bundle)
    bundle["entry"][-1]["resource"]["resourceType"] = "NotAResource"
    assert "Bundle.entry[6].resource.resourceType" in refused(bundle)


def test_bad_nhs_number_is_refused_at_its_identifier() -> None:
    """An NHS number with a wrong check digit is reported at Patient.identifier[n].value."""
    bundle = consent_refused()
    entry(bundle, "Patient")["identifier"][0]["value"] = "9990000043"
    found = refused(bundle)
    assert found == {
        "Bundle.entry[0].resource.identifier[0].value": ("the NHS number's check digit is wrong")
    }


def test_missing_consent_is_refused() -> None:
    """A bundle without a Consent is refused: every referral names its lawful basis."""
    bundle = consent_refused()
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Consent"]
    assert refused(bundle) == {"Bundle.entry": "a referral bundle needs a Consent resource"}


def test_inconsistent_risk_is_refused_at_the_risk_assessment() -> None:
    """A 'high' risk level unsupported by score or judgement points at the RiskAssessment."""
    bundle = load(SAMPLES / "nhs-referral-medium-risk.fhir.json")
    risk = entry(bundle, "RiskAssessment")
    risk["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] = "high"
    found = refused(bundle)
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"] is risk)
    assert f"Bundle.entry[{index}].resource.prediction[0].rationale" in found


def test_dash_answer_outside_the_code_system_is_refused() -> None:
    """A DASH answer coded outside Cairn's answer system is refused at that item."""
    bundle = consent_refused()
    qr = entry(bundle, "QuestionnaireResponse")
    qr["item"][3]["answer"][0]["valueCoding"]["system"] = "http://snomed.info/sct"
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"] is qr)
    assert f"Bundle.entry[{index}].resource.item[3].answer" in refused(bundle)


def test_reference_to_another_patient_is_refused() -> None:
    """A child or request that does not point at the bundle's Patient is refused."""
    bundle = consent_refused()
    original = copy.deepcopy(bundle)
    entry(bundle, "RelatedPerson")["patient"]["reference"] = "Patient/somebody-else"
    assert "Bundle.entry[1].resource.patient" in refused(bundle)
    assert bundle_to_referral(original)


def test_not_json_is_refused() -> None:
    """Bytes that are not JSON are refused at Bundle."""
    with pytest.raises(SchemaError) as caught:
        parse_bundle(b"<Bundle/>")
    assert caught.value.problems[0].field == "Bundle"


def test_cli_import_dry_run_and_submit() -> None:
    """'nhs import' maps the bundle, and submits it through the client factory it is given."""
    path = SAMPLES / "nhs-referral-medium-risk.fhir.json"
    runner = CliRunner()
    dry = runner.invoke(nhs, ["import", "--dry-run", str(path)])
    assert dry.exit_code == 0, dry.output
    assert "IDVA from kelder-nhs to kelder-idva" in dry.output
    sent: list[Referral | bytes] = []

    class Client:
        async def send(self, referral: Referral | bytes) -> Submitted:
            sent.append(referral)
            receipt = Receipt(
                referral_id=UUID("3a7d9c10-5e2b-4f8a-8c61-2b9e4d7f0a21"),
                accepted_at=datetime(2026, 11, 20, 16, 31, tzinfo=UTC),
                recipients=(),
            )
            return Submitted(receipt, already_sent=len(sent) > 1)

    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[Client]:
        assert agency == "kelder-nhs"
        yield Client()

    result = runner.invoke(nhs, ["import", str(path)], obj={"client_factory": factory})
    assert result.exit_code == 0, result.output
    assert len(sent) == 1
    assert isinstance(sent[0], Referral)
    assert "sent: referral 3a7d9c10-5e2b-4f8a-8c61-2b9e4d7f0a21 accepted" in result.output
    # The broker's 200 for the same referral again: said as already sent, with the original.
    again = runner.invoke(nhs, ["import", str(path)], obj={"client_factory": factory})
    assert again.exit_code == 0, again.output
    assert (
        "already sent: the broker accepted referral 3a7d9c10-5e2b-4f8a-8c61-2b9e4d7f0a21 at "
        "2026-11-20T16:31:00+00:00 and sent nothing again" in again.output
    )
    assert sent[0] == sent[1]  # made from the bundle alone: the same referral both times


def test_cli_import_reports_fhir_paths(tmp_path: Path) -> None:
    """'nhs import' of a malformed bundle exits non-zero and prints each FHIR path."""
    bundle = consent_refused()
    entry(bundle, "Patient")["identifier"][0]["value"] = "9990000043"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle), encoding="utf-8")
    result = CliRunner().invoke(nhs, ["import", "--dry-run", str(bad)])
    assert result.exit_code == 1
    assert "Bundle.entry[0].resource.identifier[0].value" in result.output
