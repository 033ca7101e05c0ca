"""The pure sharing core: agreements, decisions, redaction, the school calendar, deadlines.

Nothing here does I/O beyond reading its own YAML files on request, and nothing imports aiohttp,
aiokafka or sqlite3 (the import contracts in pyproject.toml hold it to that).
"""
