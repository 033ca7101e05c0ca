"""Ask a Kafka broker for cluster metadata over the raw wire protocol; exit 0 if it answers.

Used by kafka-local to decide that the broker is ready. It depends only on the Python standard
library so that it works before the project's virtualenv exists. It sends MetadataRequest v4
(still served by Kafka 4.x after KIP-896) for no topics and checks that the reply carries our
correlation id and names at least one broker (or at least the count given as a third
argument: a node of a local cluster is ready once it reports every node registered, which only
a quorum with an elected leader can record).

    kafka-ping.py HOST PORT [BROKERS]
"""

from __future__ import annotations

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4
CORRELATION_ID = 0x0CA1_2014
CLIENT_ID = b"cairn-kafka-local"


def ping(host: str, port: int, timeout: float) -> int:
    """Return the number of brokers the cluster reports; raise OSError if it does not answer."""
    header = struct.pack(
        ">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID, len(CLIENT_ID)
    )
    # topics: an empty array (null would mean "all topics"); allow_auto_topic_creation: false
    body = struct.pack(">i?", 0, False)
    request = header + CLIENT_ID + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _read(sock, 4))[0]
        reply = _read(sock, size)
    correlation_id, _throttle_ms, broker_count = struct.unpack(">iii", reply[:12])
    if correlation_id != CORRELATION_ID:
        raise OSError("reply does not match the request")
    return broker_count


def _read(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise OSError("connection closed before the reply was complete")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    wanted = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    try:
        brokers = ping(host, port, timeout=2.0)
    except (OSError, struct.error) as exc:
        print(f"no metadata from {host}:{port}: {exc}", file=sys.stderr)
        sys.exit(1)
    if brokers < wanted:
        print(f"{host}:{port} reports {brokers} of {wanted} brokers", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
