"""Refusals at the broker's door: each is a typed problem, one log line without personal data,
and nothing published; and a true resubmission gets its first receipt without sending again.

Each test goes through real mutual TLS to a broker on loopback with the memory transport. Tests
that change the federation (revoke, expire, tamper with the registry) use one of their own.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import Lifetimes, SigningKey, revoke, sign_referral
from keys import store as layout
from keys.jwk import b64url_decode, b64url_encode
from keys.pki import IssuedCertificate, issue_ca, issue_client_certificate
from schemas.federation import Federation
from tests.conftest import PASSPHRASE, FederationKeys
from tests.samples import sample
from tests.unit.conftest import (
    Broker,
    Clock,
    StartBroker,
    assert_refused,
    captured_logs,
    new_federation_keys,
)

# --- Building what a real adapter never sends ------------------------------------------------


def segments(token: bytes) -> list[bytes]:
    parts = token.split(b".")
    assert len(parts) == 3
    return parts


def encoded_json(segment: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    """A base64url JSON segment with ``change`` applied to its object."""
    value = json.loads(b64url_decode(segment))
    change(value)
    return b64url_encode(json.dumps(value).encode()).encode()


def flip_one(segment: bytes) -> bytes:
    """The segment with one base64url character in its middle replaced by another."""
    flipped = bytearray(segment)
    middle = len(flipped) // 2
    flipped[middle] = ord("A") if flipped[middle] != ord("A") else ord("B")
    return bytes(flipped)


def with_alg_none(token: bytes) -> bytes:
    """The unsecured form of a JWS (RFC 7515 appendix A.5): alg "none", no signature."""
    header, payload, _signature = segments(token)
    return encoded_json(header, lambda h: h.update(alg="none")) + b"." + payload + b"."


def without_signature(token: bytes) -> bytes:
    """The JWS with its EdDSA header kept and its signature segment emptied."""
    header, payload, _signature = segments(token)
    return header + b"." + payload + b"."


def with_other_recipients(token: bytes) -> bytes:
    """The signed referral re-addressed in its payload, the signature left as it was."""
    header, payload, signature = segments(token)
    raw = b64url_decode(payload).replace(b"kelder-marac", b"kelder-housing")
    return header + b"." + b64url_encode(raw).encode() + b"." + signature


def with_later_iat(token: bytes) -> bytes:
    """The signed referral with its protected iat header moved on by one second."""
    header, payload, signature = segments(token)

    def later(h: dict[str, object]) -> None:
        h["iat"] = int(str(h["iat"])) + 1

    return encoded_json(header, later) + b"." + payload + b"." + signature


def with_flipped_signature(token: bytes) -> bytes:
    header, payload, signature = segments(token)
    return header + b"." + payload + b"." + flip_one(signature)


def client_context(keys: FederationKeys, issued: IssuedCertificate, folder: Path) -> ssl.SSLContext:
    """A client context presenting ``issued``, trusting the federation's CA for the server."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "client.crt", folder / "client.key"
    cert.write_bytes(issued.certificate_pem())
    key.write_bytes(layout.encrypt_private_key(issued.key, PASSPHRASE))
    context = ssl.create_default_context(cafile=str(keys.store.path(layout.CA_CERT)))
    context.load_cert_chain(cert, key, password=PASSPHRASE)
    return context


def federation_ca(keys: FederationKeys) -> IssuedCertificate:
    """The federation's own TLS CA, private key included, from the key store."""
    ca_key = layout.decrypt_private_key(
        keys.store.read(layout.CA_KEY), PASSPHRASE, name=layout.CA_KEY
    )
    assert isinstance(ca_key, EllipticCurvePrivateKey)
    return IssuedCertificate(
        ca_key, x509.load_pem_x509_certificate(keys.store.read(layout.CA_CERT))
    )


def stranger_key() -> SigningKey:
    """A signing key that no registry lists."""
    return SigningKey(Ed25519PrivateKey.generate())


# --- Transport-level refusal -----------------------------------------------------------------


@pytest.mark.parametrize(
    "presented", ["no-certificate-tls1.2", "no-certificate-tls1.3", "certificate-of-another-ca"]
)
async def test_connection_without_a_federation_certificate_fails_the_handshake(
    broker: Broker, federation_keys: FederationKeys, tmp_path: Path, presented: str
) -> None:
    """Without a client certificate from the federation CA, no HTTP request is ever served."""
    context = ssl.create_default_context(cafile=str(federation_keys.store.path(layout.CA_CERT)))
    if presented == "no-certificate-tls1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    elif presented == "no-certificate-tls1.3":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        now = broker.clock()
        other = issue_ca("Another partnership", now=now, validity=timedelta(days=1))
        issued = issue_client_certificate(
            other,
            "kelder-police",
            "police",
            "Another partnership",
            now=now,
            validity=timedelta(days=1),
        )
        context = client_context(federation_keys, issued, tmp_path)
    signed = broker.sign("kelder-police", sample())
    with captured_logs() as logs, pytest.raises(aiohttp.ClientConnectionError):
        await broker.post(context, signed)
    assert broker.transport.published == 0
    assert [e for e in logs if str(e["event"]).startswith("request.")] == []
    # The control: the same context presenting the police's certificate gets through.
    store = federation_keys.store
    context.load_cert_chain(
        store.path(layout.client_cert("kelder-police")),
        store.path(layout.client_key("kelder-police")),
        password=PASSPHRASE,
    )
    assert (await broker.request("GET", "/readyz", context)).status == 200


# --- Refusals of the signed submission -------------------------------------------------------


@pytest.mark.parametrize("strip", [with_alg_none, without_signature], ids=["alg-none", "no-sig"])
async def test_unsigned_jws_is_refused(broker: Broker, strip: Callable[[bytes], bytes]) -> None:
    """A JWS with alg "none" or an empty signature is refused as 403 unsigned-referral."""
    data = sample()
    unsigned = strip(broker.sign("kelder-police", data))
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", unsigned)
    assert_refused(reply, logs, status=403, problem="unsigned-referral", referral=data)
    assert reply.body["reason"] == "unsigned"
    assert broker.transport.published == 0


async def test_plain_json_is_refused_as_unsupported_media_type(broker: Broker) -> None:
    """An unsigned JSON referral sent as application/json gets 415 and is never read."""
    data = sample()
    with captured_logs() as logs:
        reply = await broker.post(
            "kelder-police", json.dumps(data).encode(), content_type="application/json"
        )
    assert_refused(reply, logs, status=415, problem="unsupported-media-type", referral=data)
    assert broker.transport.published == 0


async def test_signature_by_another_agency_is_refused(broker: Broker) -> None:
    """Over the police's TLS identity, a referral signed with the NHS trust's key is refused."""
    data = sample()
    signed = broker.sign("kelder-nhs", data)
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", signed)
    assert_refused(reply, logs, status=403, problem="wrong-signer", referral=data)
    assert broker.transport.published == 0


async def test_signature_by_a_key_outside_the_registry_is_refused(broker: Broker) -> None:
    """A referral signed with a key the registry does not list is refused as unknown-key."""
    data = sample()
    signed = broker.sign("kelder-police", data, key=stranger_key())
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", signed)
    assert_refused(reply, logs, status=403, problem="unknown-key", referral=data)
    assert broker.transport.published == 0


async def test_tls_identity_other_than_the_named_sender_is_refused(broker: Broker) -> None:
    """The NHS trust, with its own certificate and key, cannot send a referral naming the police."""
    data = sample()
    assert data["header"]["sender_agency"] == "kelder-police"
    signed = broker.sign("kelder-nhs", data)
    with captured_logs() as logs:
        reply = await broker.post("kelder-nhs", signed)
    assert_refused(reply, logs, status=403, problem="sender-mismatch", referral=data)
    assert broker.transport.published == 0


async def test_certificate_for_an_agency_outside_the_registry_is_refused(
    broker: Broker, federation_keys: FederationKeys, federation: Federation, tmp_path: Path
) -> None:
    """A valid federation-CA certificate naming an agency the registry lacks gets unknown-sender."""
    ca = federation_ca(federation_keys)
    issued = issue_client_certificate(
        ca,
        "kelder-stranger",
        "police",
        federation.name,
        now=broker.clock(),
        validity=timedelta(days=1),
    )
    context = client_context(federation_keys, issued, tmp_path)
    data = sample()
    signed = broker.sign("kelder-police", data, key=stranger_key())
    with captured_logs() as logs:
        reply = await broker.post(context, signed)
    assert_refused(reply, logs, status=403, problem="unknown-sender", referral=data)
    assert [e["tls_agency"] for e in logs if e["event"] == "request.refused"] == ["kelder-stranger"]
    assert broker.transport.published == 0


async def test_revoked_key_is_refused(start_broker: StartBroker, own_keys: FederationKeys) -> None:
    """A referral signed with a key the registry marks revoked is refused as key-revoked."""
    clock = Clock()
    key = own_keys.trust("kelder-police").signing_key()
    revoke(own_keys.store, "kelder-police", key.kid, PASSPHRASE, now=clock())
    broker = await start_broker(own_keys, clock=clock)
    data = sample()
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", broker.sign("kelder-police", data, key=key))
    assert_refused(reply, logs, status=403, problem="key-revoked", referral=data)
    assert broker.transport.published == 0


async def test_expired_key_is_refused(start_broker: StartBroker, tmp_path: Path) -> None:
    """Past its not_after, inside the registry's and certificates' validity, a key is refused."""
    clock = Clock()
    keys = new_federation_keys(
        tmp_path / "keys", now=clock(), lifetimes=Lifetimes(key=timedelta(hours=1))
    )
    key = keys.trust("kelder-police").signing_key()  # at the real time, when it is still valid
    clock.advance(timedelta(hours=2))
    broker = await start_broker(keys, clock=clock)
    data = sample()
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", broker.sign("kelder-police", data, key=key))
    assert_refused(reply, logs, status=403, problem="key-expired", referral=data)
    assert reply.body["reason"] == "key_expired"
    assert broker.transport.published == 0


@pytest.mark.parametrize(
    "tamper",
    [with_other_recipients, with_later_iat, with_flipped_signature],
    ids=["payload", "protected-header", "signature"],
)
async def test_tampered_referral_is_refused(
    broker: Broker, tamper: Callable[[bytes], bytes]
) -> None:
    """Changing any part of a signed referral after signing fails with bad-signature."""
    data = sample()
    tampered = tamper(broker.sign("kelder-police", data))
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", tampered)
    assert_refused(reply, logs, status=403, problem="bad-signature", referral=data)
    assert broker.transport.published == 0


@pytest.mark.parametrize("when", ["too-old", "in-future", "missing"])
async def test_signature_time_outside_the_window_is_refused(broker: Broker, when: str) -> None:
    """A signed iat older than the age limit, beyond the skew, or absent: signature-time-invalid."""
    data = sample()
    settings = broker.settings
    if when == "missing":
        payload = json.dumps(data).encode()
        signed = sign_referral(payload, broker.keys.trust("kelder-police").signing_key())
        reason = "no_iat"
    else:
        offset = (
            -timedelta(seconds=settings.max_signature_age_s + 1)
            if when == "too-old"
            else timedelta(seconds=settings.max_clock_skew_s + 1)
        )
        signed = broker.sign("kelder-police", data, clock=lambda: broker.clock() + offset)
        reason = "iat_too_old" if when == "too-old" else "iat_in_future"
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", signed)
    assert_refused(reply, logs, status=403, problem="signature-time-invalid", referral=data)
    assert reply.body["reason"] == reason
    assert broker.transport.published == 0


# --- Replay ----------------------------------------------------------------------------------


async def test_reused_id_with_different_content_is_refused(broker: Broker) -> None:
    """A second referral under an id already used gets 409 replay-conflict and sends nothing."""
    first = sample()
    assert (await broker.submit("kelder-police", first)).status == 202
    published = broker.transport.published
    second = sample()
    second["header"]["referral_id"] = first["header"]["referral_id"]
    second["header"]["recipients"] = ["kelder-idva", "kelder-housing"]
    with captured_logs() as logs:
        reply = await broker.post("kelder-police", broker.sign("kelder-police", second))
    assert_refused(reply, logs, status=409, problem="replay-conflict", referral=second)
    assert broker.transport.published == published
    assert "unit.deliver.kelder-housing" not in broker.transport.topics


@pytest.mark.parametrize("resend", ["same-token", "signed-again"])
async def test_identical_resubmission_gets_the_original_receipt(
    broker: Broker, resend: str
) -> None:
    """The same referral again (same id and content) gets 200 and the first receipt; no resend."""
    data = sample()
    token = broker.sign("kelder-police", data)
    first = await broker.post("kelder-police", token)
    assert first.status == 202
    published = broker.transport.published
    assert published == 6  # 2 disclosures + received, decided, 2 x disclosed
    if resend == "signed-again":  # a retry signed a moment later: new iat, same referral
        later = broker.clock() + timedelta(seconds=1)
        token = broker.sign("kelder-police", data, clock=lambda: later)
    with captured_logs() as logs:
        again = await broker.post("kelder-police", token)
    assert again.status == 200
    assert again.body == first.body
    assert broker.transport.published == published
    assert [e["event"] for e in logs if e["event"].startswith("referral.")] == ["referral.replayed"]


async def test_a_retry_at_another_broker_gets_the_first_receipt(
    start_broker: StartBroker, federation_keys: FederationKeys
) -> None:
    """A broker that never saw a referral still sends nothing for it when the shared ledger
    says another broker published it: the retry gets 200 and the first receipt, and a reused
    id with other content gets 409."""
    first_broker = await start_broker(federation_keys, clock=Clock())
    second_broker = await start_broker(federation_keys, clock=first_broker.clock)
    data = sample()
    token = first_broker.sign("kelder-police", data)
    first = await first_broker.post("kelder-police", token)
    assert first.status == 202
    second_broker.transport.ledger.update(first_broker.transport.ledger)  # one shared ledger
    again = await second_broker.post("kelder-police", token)
    assert again.status == 200
    assert again.body == first.body
    assert second_broker.transport.published == 0
    other = sample()
    other["header"]["referral_id"] = data["header"]["referral_id"]
    other["header"]["recipients"] = ["kelder-housing"]
    reused = await second_broker.post("kelder-police", second_broker.sign("kelder-police", other))
    assert reused.status == 409
    assert second_broker.transport.published == 0


# --- The broker's own trust ------------------------------------------------------------------


def registry_with_flipped_signature(token: bytes) -> bytes:
    return with_flipped_signature(token)


def registry_with_flipped_payload(token: bytes) -> bytes:
    header, payload, signature = segments(token)
    return header + b"." + flip_one(payload) + b"." + signature


def registry_as_bare_json(token: bytes) -> bytes:
    return b64url_decode(segments(token)[1])


@pytest.mark.parametrize(
    "tamper",
    [
        registry_with_flipped_signature,
        registry_with_flipped_payload,
        with_alg_none,
        registry_as_bare_json,
    ],
    ids=["signature-byte", "payload-byte", "alg-none", "bare-json"],
)
async def test_untrusted_registry_stops_the_broker_until_restored(
    start_broker: StartBroker, own_keys: FederationKeys, tamper: Callable[[bytes], bytes]
) -> None:
    """A tampered or unsigned registry gives 503 registry-untrusted and /readyz 503, live."""
    broker = await start_broker(own_keys, clock=Clock())
    assert (await broker.ready()).status == 200
    assert (await broker.submit("kelder-police", sample())).status == 202
    published = broker.transport.published
    signed_key = broker.keys.trust("kelder-police").signing_key()
    good = own_keys.store.read(layout.REGISTRY)
    # Written as the key store writes (new file, then rename), so the change is seen at once.
    own_keys.store.write(layout.REGISTRY, tamper(good), private=False)

    data = sample()
    with captured_logs() as logs:
        reply = await broker.post(
            "kelder-police", broker.sign("kelder-police", data, key=signed_key)
        )
    assert_refused(reply, logs, status=503, problem="registry-untrusted", referral=data)
    assert broker.transport.published == published
    ready = await broker.ready()
    assert (ready.status, ready.body["registry"]) == (503, "untrusted")

    own_keys.store.write(layout.REGISTRY, good, private=False)
    assert (await broker.ready()).status == 200
