"""The verifiable audit log: the RFC 9162 Merkle tree, C2SP checkpoints, the append-only store,
its queries, offline verification and reports, and the auditor service with its command line.
"""
