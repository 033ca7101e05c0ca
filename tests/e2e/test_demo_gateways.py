"""'cairn demo --keep' (make demo KEEP=1): the school's and the IDVA service's gateways store
what was sent to their agencies, the NHS trust's referral sent through MESH among them, stay up
with a login that works until the demo is stopped, and are gone after it, as are the MESH
sandbox and the trust's bridge."""

from __future__ import annotations

import http.cookiejar
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.users import totp
from tests.conftest import FederationKeys
from tests.e2e.test_no_plaintext import demo_env, needles
from tests.kafka_support import LocalKafka
from tests.samples import REPO

KEPT = "press Ctrl-C to stop"
START_S = 240.0  # seconds for the demo to reach its kept state
STOP_S = 120.0  # seconds for it to stop after SIGTERM


def section(output: str, agency: str) -> dict[str, str]:
    """The fields the demo printed in ``agency``'s gateway section."""
    start = output.index(f"({agency})\n")
    found = {}
    for key in ("web inbox", "login", "password", "secret", "holds"):
        match = re.compile(rf"^ +{key} +(\S+)", re.M).search(output, start)
        assert match is not None, f"no {key} in the section of {agency}"
        found[key] = match.group(1)
    return found


def log_in(fields: dict[str, str], ca: ssl.SSLContext) -> tuple[urllib.request.OpenerDirector, str]:
    """Log in to the web inbox with the printed login, password and a code of the printed
    TOTP secret, as a person would; the opener (with the session cookie) and the inbox page."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ca),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    )
    web = fields["web inbox"]
    with opener.open(web + "login", timeout=10) as response:
        token = re.search(r'name="csrf" value="([^"]+)"', response.read().decode())
    assert token is not None
    form = {
        "csrf": token.group(1),
        "login": fields["login"],
        "password": fields["password"],
        "code": totp(fields["secret"], time.time()),
    }
    data = urllib.parse.urlencode(form).encode()
    with opener.open(web + "login", data, timeout=10) as response:
        assert response.url == web  # redirected to the inbox: logged in
        return opener, response.read().decode()


def refused(url: str) -> bool:
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.fixture
def kept_demo(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], list[str], Path]]:
    """'cairn demo --keep' started in its own state folder, its output read line by line."""
    prefix = f"keep{uuid.uuid4().hex[:8]}"
    env = {**demo_env(kafka, federation_keys, tmp_path, prefix), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "demo", "--keep", "--timeout", "60"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield process, lines, seen, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        reader.join(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


def read_until(lines: queue.Queue[str], seen: list[str], marker: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while not any(marker in line for line in seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout_s:g} s:\n" + "".join(seen[-60:]))
        try:
            seen.append(lines.get(timeout=min(left, 5.0)))
        except queue.Empty:
            continue
    return "".join(seen)


def test_kept_demo_serves_each_gateway_with_a_working_login_until_stopped(
    kept_demo: tuple[subprocess.Popen[str], queue.Queue[str], list[str], Path],
    federation_keys: FederationKeys,
) -> None:
    """Kept running, each gateway holds what was sent to its agency; the school's DSL logs in
    with the printed password and a code of the printed TOTP secret and sees its two
    Encompass notices, the IDVA caseworker the service's five referrals (four from the police,
    one the NHS trust sent through MESH, whose receipt came back to the trust's mailbox); at
    SIGTERM the demo stops every gateway, the MESH bridge and the sandbox, exits 0, and their
    logs hold no sample personal data."""
    process, lines, seen, state = kept_demo
    output = read_until(lines, seen, KEPT, START_S)
    ca = ssl.create_default_context(cafile=str(federation_keys.store.path("tls/ca.crt")))
    school, idva = section(output, "kelder-brook-primary"), section(output, "kelder-idva")
    assert (school["holds"], idva["holds"]) == ("2", "5")
    mesh = output[output.index("NHS trust via MESH: kelder-nhs") :]
    referral = re.search(r"referral id +([0-9a-f-]{36})\n", mesh)
    assert referral is not None
    assert re.search(r"MESH message id +\S+\n", mesh)
    assert re.search(r"receipt +ok ", mesh)
    assert re.search(r"kelder-idva +queued", mesh)
    sandbox = re.search(r"mesh-sandbox on (http://127\.0\.0\.1:\d+)", output)
    assert sandbox is not None

    opener, inbox = log_in(school, ca)
    notices = sorted(set(re.findall(r'href="/d/([0-9a-f-]{36})"', inbox)))
    assert len(notices) == 2
    with opener.open(school["web inbox"] + "d/" + notices[0], timeout=10) as response:
        assert "do not contact the parents" in response.read().decode().lower()
    _, inbox = log_in(idva, ca)
    referrals = set(re.findall(r'href="/d/([0-9a-f-]{36})"', inbox))
    assert len(referrals) == 5
    assert referral.group(1) in referrals

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=STOP_S)
    output = read_until(lines, seen, "audit verify:", 10.0)
    assert process.returncode == 0, output[-3000:]
    assert "demo: OK" in output
    assert "kelder-brook-primary: exited with 0" in output
    assert "kelder-idva: exited with 0" in output
    assert "kelder-nhs MESH bridge: exited with 0" in output
    assert re.search(r"NHS trust via MESH +kelder-idva +received", output)
    assert refused(sandbox.group(1))  # the sandbox is gone, and its mailboxes with it
    assert list(state.glob("mesh-*/sandbox")) == []
    assert refused(school["web inbox"])  # the gateways are gone
    assert refused(idva["web inbox"])
    logs = list(state.glob("gateways-*/*/gateway.log"))
    assert len(logs) == 2
    assert all(b"web inbox listening on" in log.read_bytes() for log in logs)
    (bridge_log,) = state.glob("mesh-*/bridge.log")
    assert b"MESH bridge for kelder-nhs" in bridge_log.read_bytes()
    for log in [*logs, bridge_log]:
        text = log.read_bytes()
        leaks = sorted({p.decode() for p in needles() if p in text})
        assert leaks == [], f"personal data in {log.name}: {leaks}"
