"""Agency-side code: submitting signed referrals to the broker and consuming an agency's
disclosures, with the agency's own credentials."""

from adapters.agency import agency_trust, client_for, inbox_for, opener_for
from adapters.client import ReferralClient, SubmissionRefused
from adapters.inbox import Delivery, Inbox

__all__ = [
    "Delivery",
    "Inbox",
    "ReferralClient",
    "SubmissionRefused",
    "agency_trust",
    "client_for",
    "inbox_for",
    "opener_for",
]
