"""Sharing agreements end to end: what each recipient decrypts off the real Kafka, and why.

Each test submits a signed referral to a real broker over mutual TLS, reads every delivery topic
back read_committed and opens each record with the recipient's own keys. The need-to-know table
below is written by hand from docs/domain.md#need-to-know and the subsets the agreements define,
never computed by ``decide``, so a broker that discloses more (or less) than the design says fails
here. The last test holds ``cairn policy explain`` to what the broker actually sent for every sample
referral. One broker and one topic prefix serve the whole module: each test looks only at the
records keyed by its own message id.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import pytest_asyncio

from adapters.agency import opener_for
from broker.config import Settings
from broker.kafka.topics import delivery_topic, federation_topics
from broker.kafka.transport import create_topics
from schemas.disclosure import DisclosedReferral, Disclosure
from schemas.encompass import EncompassNotification
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientStatus
from schemas.referral import FIELD_GROUPS, FieldGroup, Referral
from tests.conftest import FederationKeys
from tests.integration.conftest import client, make_settings, running_broker
from tests.kafka_support import LocalKafka, read_committed_many
from tests.samples import FEDERATION_DIR, REPO, SAMPLES, sample
from tests.unit.policy.cases import UNSAFE_LANDLINE, referral, sample_dict

pytestmark = pytest.mark.asyncio(loop_scope="module")

G = FieldGroup
FULL = "full"


# --- the need-to-know table, by hand from docs/domain.md and the agreements' subsets ----------


@dataclass(frozen=True)
class Part:
    """A limited share of one group: the subset's name in the agreement and the fields it keeps."""

    subset: str
    fields: frozenset[str]


Share = str | Part  # FULL, or a limited subset

CHILDREN_BASIC = Part(
    "children_basic",
    frozenset(
        {
            "given_name",
            "family_name",
            "date_of_birth",
            "school_agency",
            "home_educated",
            "present_at_incident",
        }
    ),
)
HOUSEHOLD = Part("household", frozenset({"given_name", "family_name", "date_of_birth"}))
ACCESS_NEEDS = Part(
    "access_needs", frozenset({"disability", "first_language", "interpreter_needed"})
)
LEVEL_ONLY = Part("level_only", frozenset({"level"}))
OWN_AGENCY = Part("own_agency", frozenset({"involved", "actions"}))
WISHES_AND_REQUESTS = Part("wishes_and_requests", frozenset({"victim_wishes", "support_requested"}))
PERPETRATOR_IDENTITY = {
    "given_name",
    "family_name",
    "aliases",
    "date_of_birth",
    "relationship",
    "bail_and_orders",
}
ENCOMPASS_CHILD = frozenset(
    {"given_name", "family_name", "date_of_birth", "present_at_incident", "where", "voice_of_child"}
)
#: The DASH (safelives-2009) questions about the children: fear for others (q3), child contact
#: (q7), pregnancy or a new baby (q9), harm to others (q18), breached orders (q23).
CHILD_ITEMS = {"q3", "q7", "q9", "q18", "q23"}

ALL_FULL: dict[FieldGroup, Share] = dict.fromkeys(G, FULL)
MARAC_ROW = ALL_FULL
IDVA_ROW: dict[FieldGroup, Share] = {**ALL_FULL, G.G4: CHILDREN_BASIC, G.G7: ACCESS_NEEDS}
POLICE_ROW: dict[FieldGroup, Share] = {**ALL_FULL, G.G7: ACCESS_NEEDS}
NHS_ROW: dict[FieldGroup, Share] = {
    G.G0: FULL,
    G.G1: FULL,
    G.G2: FULL,
    G.G3: Part("identity_and_orders", frozenset(PERPETRATOR_IDENTITY)),
    G.G4: CHILDREN_BASIC,
    G.G5: Part(
        "when_where_injuries",
        frozenset({"occurred_at", "location", "injuries", "reported_to_police", "police_attended"}),
    ),
    G.G6: LEVEL_ONLY,
    G.G8: FULL,
    G.G9: OWN_AGENCY,
    G.G10: WISHES_AND_REQUESTS,
}
CSC_ROW: dict[FieldGroup, Share] = {
    **ALL_FULL,
    G.G6: Part("level_and_child_items", frozenset({"level", "dash"})),
    G.G7: ACCESS_NEEDS,
}
SCHOOL_ROW: dict[FieldGroup, Share] = {
    G.G0: Part(
        "routing",
        frozenset(
            {
                "referral_id",
                "schema_version",
                "sender_agency",
                "sender_officer",
                "purpose",
                "priority",
                "classification",
                "police_reference",
                "created_at",
            }
        ),
    ),
    G.G4: Part("own_pupil", ENCOMPASS_CHILD),
    G.G5: Part("encompass", frozenset({"occurred_at", "location", "summary"})),
    G.G8: Part(
        "basis_only",
        frozenset({"art6_basis", "art9_condition", "dpa_condition", "statutory_gateway"}),
    ),
}
CSC_ENCOMPASS_ROW: dict[FieldGroup, Share] = {
    **SCHOOL_ROW,
    G.G4: Part("home_educated", ENCOMPASS_CHILD),
}
HOUSING_ROW: dict[FieldGroup, Share] = {
    G.G0: FULL,
    G.G1: FULL,
    G.G2: FULL,
    G.G3: Part("identity_address_orders", frozenset(PERPETRATOR_IDENTITY | {"address"})),
    G.G4: HOUSEHOLD,
    G.G5: Part(
        "when_where",
        frozenset({"occurred_at", "location", "reported_to_police", "police_attended"}),
    ),
    G.G6: LEVEL_ONLY,
    G.G8: FULL,
    G.G9: OWN_AGENCY,
    G.G10: WISHES_AND_REQUESTS,
}
PROBATION_ROW: dict[FieldGroup, Share] = {
    G.G0: FULL,
    G.G1: Part(
        "identity_only", frozenset({"given_name", "family_name", "aliases", "date_of_birth"})
    ),
    G.G3: FULL,
    G.G4: HOUSEHOLD,
    G.G5: FULL,
    G.G6: LEVEL_ONLY,
    G.G8: FULL,
    G.G9: OWN_AGENCY,
    G.G10: Part("wishes_only", frozenset({"victim_wishes"})),
}

WITH_GATEWAY = "art6_1_e+art9_2_g+dpa2018_sch1_para18+cda1998_s115"
NO_GATEWAY = "art6_1_e+art9_2_g+dpa2018_sch1_para18"  # the agreement names no s115 basis
ENCOMPASS_BASIS = "art6_1_c+daa2021_s49a"
# s49A names schools: a child on no school roll is notified to CSC on the safeguarding basis.
CSC_ENCOMPASS_BASIS = "art6_1_e+art9_2_g+dpa2018_sch1_para18+ca2004_s11"
EVERY_CHILD = frozenset({"Pip", "Robin", "Wren"})  # the full referral's three children


@dataclass(frozen=True)
class Row:
    """One recipient for one purpose: what it must decrypt, under which agreement and basis."""

    recipient: str
    purpose: str
    sender: str
    agreement: str
    lawful_basis: str
    consent_basis: str
    groups: Mapping[FieldGroup, Share]
    children: frozenset[str] = EVERY_CHILD  # the children its G4 names

    @property
    def labels(self) -> list[str]:
        return [
            g.value if isinstance(share, str) else f"{g.value}.{share.subset}"
            for g in G
            if (share := self.groups.get(g)) is not None
        ]

    @property
    def id(self) -> str:
        return f"{self.recipient}-{self.purpose}-from-{self.sender}"


ENCOMPASS_CONSENT = "not_required_statutory+override:risk_to_children"
ROWS = [
    Row(
        "kelder-marac",
        "MARAC",
        "kelder-police",
        "kelder-marac-isa",
        WITH_GATEWAY,
        "obtained",
        MARAC_ROW,
    ),
    Row(
        "kelder-idva",
        "IDVA",
        "kelder-police",
        "kelder-idva-isa",
        WITH_GATEWAY,
        "obtained",
        IDVA_ROW,
    ),
    Row(
        "kelder-idva",
        "MARAC",
        "kelder-police",
        "kelder-marac-isa",
        WITH_GATEWAY,
        "obtained",
        IDVA_ROW,
    ),
    Row(
        "kelder-police",
        "MARAC",
        "kelder-nhs",
        "kelder-marac-isa",
        WITH_GATEWAY,
        "obtained",
        POLICE_ROW,
    ),
    Row(
        "kelder-police",
        "CHILD_SAFEGUARDING",
        "kelder-nhs",
        "kelder-child-safeguarding-isa",
        NO_GATEWAY,
        "obtained",
        POLICE_ROW,
    ),
    Row(
        "kelder-police",
        "PERPETRATOR_MANAGEMENT",
        "kelder-idva",
        "kelder-perpetrator-isa",
        WITH_GATEWAY,
        "obtained",
        POLICE_ROW,
    ),
    Row(
        "kelder-nhs",
        "HEALTH_SAFEGUARDING",
        "kelder-police",
        "kelder-health-safeguarding-isa",
        NO_GATEWAY,
        "obtained",
        NHS_ROW,
    ),
    Row(
        "kelder-csc",
        "CHILD_SAFEGUARDING",
        "kelder-police",
        "kelder-child-safeguarding-isa",
        NO_GATEWAY,
        "obtained",
        CSC_ROW,
    ),
    Row(
        "kelder-brook-primary",
        "ENCOMPASS",
        "kelder-police",
        "kelder-encompass",
        ENCOMPASS_BASIS,
        ENCOMPASS_CONSENT,
        SCHOOL_ROW,
        frozenset({"Pip"}),  # the only child at Brookside
    ),
    Row(
        "kelder-csc",
        "ENCOMPASS",
        "kelder-police",
        "kelder-encompass",
        CSC_ENCOMPASS_BASIS,
        ENCOMPASS_CONSENT,
        CSC_ENCOMPASS_ROW,
        frozenset({"Robin"}),  # the only child under 18 on no school roll
    ),
    Row(
        "kelder-housing",
        "HOUSING",
        "kelder-police",
        "kelder-housing-isa",
        WITH_GATEWAY,
        "obtained",
        HOUSING_ROW,
    ),
    Row(
        "kelder-probation",
        "PERPETRATOR_MANAGEMENT",
        "kelder-police",
        "kelder-perpetrator-isa",
        WITH_GATEWAY,
        "obtained",
        PROBATION_ROW,
    ),
]


# --- one broker for the module, and reading back what it sent ----------------------------------


@dataclass(frozen=True)
class Broker:
    url: str
    settings: Settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker(
    kafka: LocalKafka, federation: Federation, federation_keys: FederationKeys
) -> AsyncIterator[Broker]:
    """A real broker over mutual TLS for this module, on a topic prefix of its own."""
    settings = make_settings(kafka.bootstrap, federation_keys.root)
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    async with running_broker(settings, federation, federation_keys) as url:
        yield Broker(url, settings)


async def submit(
    keys: FederationKeys,
    broker: Broker,
    sender: str,
    message: Referral | EncompassNotification | bytes,
) -> Receipt:
    async with client(keys, broker.url, sender) as c:
        return await c.submit(message)


async def delivered(
    broker: Broker, federation: Federation, keys: FederationKeys, message_id: UUID | str
) -> dict[str, list[Disclosure]]:
    """Per agency, every committed record of ``message_id`` on its topic, opened with its keys."""
    prefix = broker.settings.topic_prefix
    topics = {a.id: delivery_topic(prefix, a.id) for a in federation.agencies}
    records = await read_committed_many(
        broker.settings.kafka_bootstrap_servers, list(topics.values())
    )
    key = str(message_id).encode()
    out: dict[str, list[Disclosure]] = {}
    for agency, topic in topics.items():
        mine = [r.value for r in records[topic] if r.key == key]
        out[agency] = []
        if mine:  # opening loads the agency's keys: only when there is something to open
            open_value = opener_for(keys.trust(agency), agency)
            out[agency] = [open_value(value) for value in mine]
    return out


def present(value: Any) -> set[str]:
    """The fields of a dumped group (of every entry, for G4) that hold something."""
    entries = value if isinstance(value, list) else [value]
    return {k for e in entries for k, v in e.items() if v is not None and v != [] and v != {}}


def groups_in(disclosed: DisclosedReferral) -> set[FieldGroup]:
    """The field groups a redacted referral actually carries."""
    return {g for g in G if disclosed.group(g) not in (None, ())}


def assert_no_unsafe_route(disclosure: Disclosure) -> None:
    text = disclosure.model_dump_json()
    assert UNSAFE_LANDLINE not in text
    assert UNSAFE_LANDLINE.replace(" ", "") not in text
    referral_ = disclosure.referral
    if referral_ is not None and referral_.safe_contact is not None:
        assert all(route.safe for route in referral_.safe_contact.routes)


# --- 1: every role of the matrix, through the real Kafka ---------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_recipient_decrypts_exactly_the_groups_of_its_row(
    row: Row, broker: Broker, federation: Federation, federation_keys: FederationKeys
) -> None:
    """What each matrix role decrypts off Kafka holds exactly its row's groups and subset fields."""
    source = referral(row.purpose, [row.recipient], row.sender)
    receipt = await submit(federation_keys, broker, row.sender, source)
    (status,) = receipt.recipients
    assert (status.agency, status.status) == (row.recipient, RecipientStatus.QUEUED)
    assert status.reasons[0] == f"agreement.{row.agreement}"

    sent = await delivered(broker, federation, federation_keys, source.header.referral_id)
    assert {a for a, d in sent.items() if d} == {row.recipient}, "only the recipient gets it"
    (disclosure,) = sent[row.recipient]
    assert disclosure.referral_id == source.header.referral_id
    assert disclosure.recipient_agency == row.recipient
    assert disclosure.sender_agency == row.sender
    assert disclosure.purpose.value == row.purpose
    assert disclosure.agreement == row.agreement
    assert disclosure.lawful_basis.label == row.lawful_basis
    assert disclosure.consent_basis.label == row.consent_basis
    assert disclosure.notification is None
    assert disclosure.referral is not None
    assert [g.label for g in disclosure.groups] == row.labels

    # Exactly the row's groups, and nothing else.
    assert groups_in(disclosure.referral) == set(row.groups)
    got = disclosure.referral.model_dump(mode="json")
    whole = DisclosedReferral.whole(source).model_dump(mode="json")
    for group, share in row.groups.items():
        name = FIELD_GROUPS[group]
        value, original = got[name], whole[name]
        if isinstance(share, Part):
            # A limited subset: only its fields, and all of them the sender filled in.
            assert present(value) <= share.fields, f"{group} has more than {share.subset}"
            assert present(value) >= share.fields & present(original), f"{group} lost fields"
        elif group is G.G2:
            assert value == {**original, "routes": [r for r in original["routes"] if r["safe"]]}
        else:
            assert value == original, f"{group} is not whole"
    if G.G4 in row.groups:
        assert {c["given_name"] for c in got["children"]} == row.children
    if row.groups.get(G.G9) == OWN_AGENCY:
        actions = got["agencies_actions"]
        assert {i["agency"] for i in actions["involved"]} == {row.recipient}
        assert {a["by_agency"] for a in actions["actions"]} == {row.recipient}
    g6 = row.groups.get(G.G6)
    if isinstance(g6, Part) and g6.subset == "level_and_child_items":
        assert set(got["risk"]["dash"]["answers"]) == CHILD_ITEMS
    assert_no_unsafe_route(disclosure)


async def test_school_decrypts_the_encompass_notification_and_nothing_more(
    broker: Broker, federation: Federation, federation_keys: FederationKeys
) -> None:
    """An Encompass notification reaches only the school, whole, on its statutory basis."""
    data = sample_dict("encompass-notification.json")
    data["header"]["notification_id"] = str(uuid.uuid4())
    notification = EncompassNotification.model_validate(data)
    receipt = await submit(federation_keys, broker, "kelder-police", notification)
    assert [(r.agency, r.status) for r in receipt.recipients] == [
        ("kelder-brook-primary", RecipientStatus.QUEUED)
    ]
    sent = await delivered(broker, federation, federation_keys, notification.header.notification_id)
    assert {a for a, d in sent.items() if d} == {"kelder-brook-primary"}
    (disclosure,) = sent["kelder-brook-primary"]
    assert disclosure.referral is None
    assert disclosure.notification == notification
    assert disclosure.agreement == "kelder-encompass"
    assert disclosure.lawful_basis.label == ENCOMPASS_BASIS
    assert disclosure.consent_basis.label == "not_required_statutory"
    assert [g.label for g in disclosure.groups] == [
        "G0.routing",
        "G4.own_pupil",
        "G5.encompass",
        "G8.basis_only",
    ]
    # The statutory content (s49A): the child, the incident, the circumstances; nothing else.
    content = json.loads(disclosure.model_dump_json())["notification"]["content"]
    assert set(content) == {
        "child_given_name",
        "child_family_name",
        "child_date_of_birth",
        "police_reference",
        "occurred_at",
        "location",
        "child_present",
        "child_whereabouts",
        "voice_of_child",
        "circumstances",
        "do_not_approach_parents",
    }
    assert_no_unsafe_route(disclosure)


# --- 2: cairn policy explain agrees with what was sent -----------------------------------------


async def explain(path: Path) -> dict[str, Any]:
    """``cairn policy explain PATH --json`` as an IG officer runs it, over the dev federation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_FEDERATION_DIR"] = str(FEDERATION_DIR)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "policy",
        "explain",
        str(path),
        "--json",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    explained: dict[str, Any] = json.loads(out)
    return explained


SAMPLE_REFERRALS = sorted(SAMPLES.glob("referral-*.json"))


@pytest.mark.parametrize("addressing", ["as-written", "to-every-member"])
@pytest.mark.parametrize("path", SAMPLE_REFERRALS, ids=[p.stem for p in SAMPLE_REFERRALS])
async def test_policy_explain_agrees_with_what_was_sent(
    path: Path,
    addressing: str,
    tmp_path: Path,
    broker: Broker,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """Every sample's explained verdict, groups and reasons match what Kafka and the receipt got."""
    data = sample(path.name)
    sender = data["header"]["sender_agency"]
    if addressing == "to-every-member":
        data["header"]["recipients"] = [a.id for a in federation.agencies if a.id != sender]
    file = tmp_path / path.name
    file.write_text(json.dumps(data), encoding="utf-8")

    explained = await explain(file)
    assert explained["refused"] is None
    decisions = {d["recipient"]: d for d in explained["decisions"]}
    assert list(decisions) == data["header"]["recipients"]
    assert any(d["allowed"] for d in decisions.values())
    if addressing == "to-every-member":
        assert not all(d["allowed"] for d in decisions.values())

    receipt = await submit(federation_keys, broker, sender, file.read_bytes())
    sent = await delivered(broker, federation, federation_keys, data["header"]["referral_id"])

    assert [r.agency for r in receipt.recipients] == list(decisions)
    for r in receipt.recipients:
        decision = decisions[r.agency]
        expected = RecipientStatus.QUEUED if decision["allowed"] else RecipientStatus.REFUSED
        assert (r.status, list(r.reasons)) == (expected, decision["reasons"]), r.agency
    for agency, disclosures in sent.items():
        decision = decisions.get(agency)
        if decision is None or not decision["allowed"]:
            assert disclosures == [], f"{agency} got a record explain did not allow"
            continue
        assert len(disclosures) == 1, f"{agency} got {len(disclosures)} records"
        (disclosure,) = disclosures
        assert disclosure.referral is not None
        assert [g.label for g in disclosure.groups] == decision["groups"], agency
        assert {g.value for g in groups_in(disclosure.referral)} == {
            label.split(".")[0] for label in decision["groups"]
        }, agency
        assert disclosure.agreement == decision["agreement"]
        assert disclosure.lawful_basis.label == decision["lawful_basis"]
        assert disclosure.consent_basis.label == decision["consent_basis"]
        assert disclosure.retention.label == decision["retention"]
        assert_no_unsafe_route(disclosure)
