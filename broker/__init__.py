"""The Cairn broker: authenticate, validate, decide, seal and publish safeguarding referrals."""
