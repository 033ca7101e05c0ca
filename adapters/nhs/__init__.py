"""NHS trust adapter: HL7 FHIR R4 safeguarding referrals in, FHIR R4 bundles of disclosures out.

Models are ``fhir.resources``' R4B package (see README.md for why R4B serves an R4 exchange);
identifiers follow UK Core (NHS number system ``https://fhir.nhs.uk/Id/nhs-number``).
"""

from adapters.nhs.inbound import bundle_to_referral, parse_bundle
from adapters.nhs.outbound import disclosure_to_bundle, referral_to_bundle

__all__ = ["bundle_to_referral", "disclosure_to_bundle", "parse_bundle", "referral_to_bundle"]
