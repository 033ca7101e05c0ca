"""gateway.users: argon2 passwords, RFC 6238 TOTP, one-time enrolment, throttling, disable."""

from __future__ import annotations

import base64
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.users import (
    LoginRefused,
    Outcome,
    UserError,
    Users,
    totp,
)

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


@pytest.mark.parametrize(
    ("at_s", "eight_digits"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_totp_matches_rfc6238_sha1_vectors(at_s: int, eight_digits: str) -> None:
    assert totp(RFC_SECRET, at_s, digits=8) == eight_digits
    assert totp(RFC_SECRET, at_s) == eight_digits[-6:]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(tmp_path: Path, clock: Clock) -> Iterator[Users]:
    found = Users(tmp_path / "gw" / "school.users.sqlite", "school", clock=clock, lock_s=60)
    yield found
    found.close()


def test_add_gives_a_one_time_login_and_stores_only_a_hash(
    users: Users, clock: Clock, tmp_path: Path
) -> None:
    enrolment = users.add("DSL@School.example")
    assert enrolment.staff.login == "dsl@school.example"
    assert enrolment.staff.staff_id.startswith("staff-")
    assert "dsl" not in enrolment.staff.staff_id
    uri = urlsplit(enrolment.otpauth_uri)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    query = parse_qs(uri.query)
    assert query["secret"] == [enrolment.totp_secret]
    assert query["algorithm"] == ["SHA1"]
    assert query["digits"] == ["6"]
    assert query["period"] == ["30"]
    with sqlite3.connect(tmp_path / "gw" / "school.users.sqlite") as db:
        stored = db.execute("SELECT password_hash FROM staff").fetchall()
    assert len(stored) == 1
    assert stored[0][0].startswith("$argon2id$")
    assert enrolment.password not in stored[0][0]
    assert stat.S_IMODE((tmp_path / "gw" / "school.users.sqlite").stat().st_mode) == 0o600
    code = totp(enrolment.totp_secret, clock.now)
    staff = users.authenticate("dsl@school.example", enrolment.password, code)
    assert staff.staff_id == enrolment.staff.staff_id
    with pytest.raises(UserError, match="taken"):
        users.add("dsl@school.example")


def test_wrong_password_or_code_is_refused(users: Users, clock: Clock) -> None:
    e = users.add("dsl")
    good = totp(e.totp_secret, clock.now)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for password, code in [
        (e.password + "x", good),
        (e.password, wrong),
        (e.password, ""),
        (e.password, "abcdef"),
        ("", good),
    ]:
        with pytest.raises(LoginRefused) as refused:
            users.authenticate("dsl", password, code)
        assert refused.value.outcome is Outcome.BAD_CREDENTIALS
    with pytest.raises(LoginRefused):
        users.authenticate("nobody", e.password, good)


def test_a_code_is_accepted_once_and_a_neighbouring_step_is_allowed(
    users: Users, clock: Clock
) -> None:
    e = users.add("dsl")
    code = totp(e.totp_secret, clock.now)
    users.authenticate("dsl", e.password, code)
    with pytest.raises(LoginRefused):
        users.authenticate("dsl", e.password, code)  # replayed in the same step
    clock.now += 30
    users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now - 30 + 60))
    clock.now += 300
    with pytest.raises(LoginRefused):  # three steps old
        users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now - 90))


def test_repeated_failures_lock_the_account_for_a_doubling_pause(
    users: Users, clock: Clock
) -> None:
    e = users.add("dsl")
    for _ in range(5):
        with pytest.raises(LoginRefused):
            users.authenticate("dsl", "wrong", "000000")
    with pytest.raises(LoginRefused) as refused:  # even the right login while locked
        users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now))
    assert refused.value.outcome is Outcome.LOCKED
    assert refused.value.retry_after_s == pytest.approx(60)
    clock.now += 61
    for _ in range(5):
        with pytest.raises(LoginRefused):
            users.authenticate("dsl", "wrong", "000000")
    with pytest.raises(LoginRefused) as refused:
        users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now))
    assert refused.value.retry_after_s == pytest.approx(120)
    clock.now += 121
    users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now))


def test_disable_refuses_and_reset_replaces_both_factors(users: Users, clock: Clock) -> None:
    e = users.add("dsl")
    staff = users.disable("dsl")
    assert staff.disabled
    assert users.get(staff.staff_id) == staff
    with pytest.raises(LoginRefused) as refused:
        users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now))
    assert refused.value.outcome is Outcome.DISABLED
    again = users.reset("dsl")
    assert again.staff.staff_id == e.staff.staff_id
    assert again.password != e.password
    assert again.totp_secret != e.totp_secret
    clock.now += 30
    with pytest.raises(LoginRefused):
        users.authenticate("dsl", e.password, totp(e.totp_secret, clock.now))
    clock.now += 30
    assert users.authenticate("dsl", again.password, totp(again.totp_secret, clock.now))
    with pytest.raises(UserError):
        users.reset("nobody")
    with pytest.raises(UserError):
        users.add("two words")


def test_the_user_commands_add_reset_disable_and_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from gateway.cli import gateway
    from gateway.users import users_path

    monkeypatch.setenv("CAIRN_STATE_DIR", str(tmp_path))
    run = CliRunner().invoke
    added = run(gateway, ["--as", "school", "user", "add", "dsl@school.example"])
    assert added.exit_code == 0, added.output
    uri = next(line for line in added.output.splitlines() if "otpauth://" in line).split()[-1]
    password = next(line for line in added.output.splitlines() if "password:" in line).split()[-1]
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    taken = run(gateway, ["--as", "school", "user", "add", "dsl@school.example"])
    assert taken.exit_code == 1
    assert "taken" in taken.output
    assert "Traceback" not in taken.output
    users = Users(users_path(tmp_path, "school"), "school")
    try:
        assert users.authenticate("dsl@school.example", password, totp(secret, time.time()))
        assert (
            run(gateway, ["--as", "school", "user", "disable", "dsl@school.example"]).exit_code == 0
        )
        listed = run(gateway, ["--as", "school", "user", "list"])
        assert "disabled" in listed.output
        reset = run(gateway, ["--as", "school", "user", "reset", "dsl@school.example"])
        assert reset.exit_code == 0
        assert password not in reset.output
        assert "active" in run(gateway, ["--as", "school", "user", "list"]).output
        housing = run(gateway, ["--as", "housing", "user", "list"])
        assert "dsl@" not in housing.output
        missing = run(gateway, ["--as", "school", "user", "disable", "nobody"])
        assert missing.exit_code == 1
        assert "no account" in missing.output
    finally:
        users.close()
