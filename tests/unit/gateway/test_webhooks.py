"""Webhook signatures are the Standard Webhooks scheme (its published example reproduces), and
the gateway's settings refuse a webhook that would carry a disclosure in the clear."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from gateway.webhooks import sign, verify

# The example of the Standard Webhooks specification (https://www.standardwebhooks.com/).
SECRET = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
MSG_ID, STAMP, BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_standard_webhooks_one() -> None:
    assert sign(SECRET, MSG_ID, STAMP, BODY) == EXPECTED


def test_a_receiver_accepts_only_the_signed_recent_message() -> None:
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(STAMP), "webhook-signature": EXPECTED}
    assert verify(SECRET, headers, BODY, now=STAMP + 10)
    assert not verify(SECRET, headers, BODY + b" ", now=STAMP)
    assert not verify(b"another secret", headers, BODY, now=STAMP)
    assert not verify(SECRET, headers, BODY, now=STAMP + 3600)  # a replay an hour later
    assert not verify(SECRET, {**headers, "webhook-id": "msg_other"}, BODY, now=STAMP)
    assert not verify(SECRET, {"webhook-id": MSG_ID}, BODY, now=STAMP)


def test_a_webhook_needs_https_except_on_loopback(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_" + base64.b64encode(SECRET).decode())
    assert GatewaySettings(webhook_url="https://cms.example/hook", webhook_secret_file=secret)
    local = GatewaySettings(webhook_url="http://127.0.0.1:9000/hook", webhook_secret_file=secret)
    assert local.webhook_secret() == SECRET
    with pytest.raises(ValidationError, match="must be https"):
        GatewaySettings(webhook_url="http://cms.example/hook", webhook_secret_file=secret)
    with pytest.raises(ValidationError, match="together"):
        GatewaySettings(webhook_url="https://cms.example/hook")
    short = tmp_path / "short"
    short.write_text("too short")
    with pytest.raises(ValueError, match="24 characters"):
        GatewaySettings(
            webhook_url="https://cms.example/h", webhook_secret_file=short
        ).webhook_secret()
