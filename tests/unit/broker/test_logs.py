"""The logging processor that keeps personal data out of every log line."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from broker.logs import drop_personal_data


def test_personal_keys_are_dropped_and_ids_kept() -> None:
    """Keys naming personal data lose their values; ids and codes pass through."""
    event = drop_personal_data(
        None,
        "info",
        {
            "event": "x",
            "victim_name": "Testina",
            "date_of_birth": "1991-04-17",
            "postcode": "ZZ99 3WZ",
            "referral_id": "abc",
            "purpose": "MARAC",
        },
    )
    assert event["victim_name"] == event["date_of_birth"] == event["postcode"]
    assert "Testina" not in repr(event)
    assert event["referral_id"] == "abc"
    assert event["purpose"] == "MARAC"


def test_processor_runs_in_a_configured_chain() -> None:
    """Through structlog, a careless field is dropped before any renderer sees it."""
    with capture_logs(processors=[drop_personal_data]) as logs:
        structlog.get_logger().info("referral.accepted", nhs_number="9990000018", sender="p")
    assert logs == [
        {
            "event": "referral.accepted",
            "nhs_number": "[dropped: personal data]",
            "sender": "p",
            "log_level": "info",
        }
    ]
