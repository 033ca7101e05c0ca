"""Agency-side code: submitting referrals to the broker and consuming an agency's disclosures."""

from adapters.client import ReferralClient, SubmissionRefused
from adapters.inbox import Delivery, Inbox

__all__ = ["Delivery", "Inbox", "ReferralClient", "SubmissionRefused"]
