"""gateway.web.security: sessions that expire (idle and absolute), CSRF tokens, headers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.web.security import CSP, SECURITY_HEADERS, Sessions, WebSettings, check_csrf


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def sessions(clock: Clock, **settings: float) -> Sessions:
    return Sessions(WebSettings.model_validate(settings), clock=clock)


def test_a_session_ends_after_its_idle_time() -> None:
    clock = Clock()
    live = sessions(clock, session_idle_s=60, session_absolute_s=3600)
    session = live.start("staff-1")
    clock.now += 59
    assert live.get(session.id) is session
    clock.now += 59  # the request above restarted the idle clock
    assert live.get(session.id) is session
    clock.now += 61
    assert live.get(session.id) is None
    assert len(live) == 0


def test_a_session_ends_at_its_absolute_time_however_busy() -> None:
    clock = Clock()
    live = sessions(clock, session_idle_s=60, session_absolute_s=200)
    session = live.start("staff-1")
    for _ in range(3):
        clock.now += 50
        assert live.get(session.id) is session
    clock.now += 51
    assert live.get(session.id) is None


def test_ids_are_random_and_unknown_or_ended_ids_are_refused() -> None:
    clock = Clock()
    live = sessions(clock)
    one, two = live.start("staff-1"), live.start("staff-1")
    assert one.id != two.id
    assert one.csrf != two.csrf
    assert len(one.id) >= 43
    assert live.get(None) is None
    assert live.get("") is None
    assert live.get(one.id + "x") is None
    live.end(one.id)
    assert live.get(one.id) is None
    assert live.end_staff("staff-1") == 1
    assert live.get(two.id) is None


def test_the_oldest_session_ends_when_the_bound_is_reached() -> None:
    clock = Clock()
    live = sessions(clock, sessions_max=2)
    first = live.start("a")
    clock.now += 1
    live.start("b")
    clock.now += 1
    live.start("c")
    assert len(live) == 2
    assert live.get(first.id) is None


def test_csrf_only_the_sessions_own_token() -> None:
    clock = Clock()
    live = sessions(clock)
    one, two = live.start("a"), live.start("b")
    assert check_csrf(one, one.csrf)
    assert not check_csrf(one, two.csrf)
    assert not check_csrf(one, None)
    assert not check_csrf(one, "")
    assert not check_csrf(one, one.csrf[:-1])
    assert not check_csrf(one, one.csrf + "é")


def test_headers_forbid_script_framing_and_caching() -> None:
    assert "default-src 'none'" in CSP
    assert "script-src" not in CSP
    assert "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "bad", [{"session_idle_s": 0}, {"session_absolute_s": -1}, {"session_idle": 5}]
)
def test_settings_are_typed(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        WebSettings.model_validate(bad)


def test_the_web_inbox_listens_on_its_own_port_with_a_certificate_pair() -> None:
    defaults = WebSettings()
    assert (defaults.enabled, defaults.host, defaults.port) == (True, "127.0.0.1", 8447)
    with pytest.raises(ValidationError, match="TLS_KEY_FILE together"):
        WebSettings(tls_cert_file="web.crt")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        WebSettings(port=70000)
