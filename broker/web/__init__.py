"""The HTTP shell: the aiohttp app (mutual TLS identity, submission), RFC 9457 problem mapping,
the ops and IG dashboards and their static files.
"""
