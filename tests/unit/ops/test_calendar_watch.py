"""The calendar watch: a warning (log line and gauge) 60 days before the school calendar's term
dates run out, a distinct line once they have, and the gauge on the broker's GET /metrics.

Past the term dates the Encompass deadline ("before the start of the next school day", DAA 2021
s49A) follows the conservative rule, so the operator must be told in time to add next year's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import aiohttp
from structlog.testing import capture_logs

from broker.config import Settings
from broker.ops.metrics import CalendarWatch, Metrics
from broker.policy.calendar import CONSERVATIVE_RULE, WEEKDAYS
from tests.conftest import FederationKeys
from tests.unit.conftest import StartBroker
from tests.unit.policy.cases import CALENDAR

LAST_DAY = date(2027, 7, 21)  # the shipped calendar's last term ends here
GAUGE = "cairn_school_calendar_days_left"


class Clock:
    """A clock a test sets; noon UTC on the given day."""

    def __init__(self, day: date) -> None:
        self.now = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def watched(day: date, warn_days: int = 60) -> tuple[CalendarWatch, Metrics, Clock]:
    clock = Clock(day)
    metrics = Metrics()
    metrics.calendar_watch = CalendarWatch(CALENDAR, clock, warn_days)
    return metrics.calendar_watch, metrics, clock


def test_the_warning_fires_at_exactly_sixty_days() -> None:
    """60 days before the last term ends: one `calendar.running_out` warning with the end date
    and the days left, and nothing else (no personal data to carry)."""
    watch, _metrics, _clock = watched(LAST_DAY - timedelta(days=60))
    with capture_logs() as logs:
        assert watch.check() == 60
    assert logs == [
        {
            "event": "calendar.running_out",
            "log_level": "warning",
            "last_day": "2027-07-21",
            "days_left": 60,
            "warn_days": 60,
        }
    ]


def test_the_warning_does_not_fire_at_sixty_one_days() -> None:
    """61 days before the end the watch stays quiet."""
    watch, _metrics, _clock = watched(LAST_DAY - timedelta(days=61))
    with capture_logs() as logs:
        assert watch.check() == 61
    assert logs == []


def test_the_warning_is_logged_once_a_day() -> None:
    """Checked hourly, the line is written once per local day, and again the next day."""
    watch, _metrics, clock = watched(LAST_DAY - timedelta(days=30))
    with capture_logs() as logs:
        watch.check()
        watch.check()
        clock.now += timedelta(days=1)
        watch.check()
    assert [e["days_left"] for e in logs] == [30, 29]


def test_the_warning_window_is_the_setting() -> None:
    """`calendar_warn_days` (default 60, in days) sets the window."""
    assert Settings().calendar_warn_days == 60
    watch, _metrics, _clock = watched(LAST_DAY - timedelta(days=90), warn_days=90)
    with capture_logs() as logs:
        watch.check()
    assert [e["event"] for e in logs] == ["calendar.running_out"]


def test_an_ended_calendar_has_its_own_line_and_a_negative_gauge() -> None:
    """Past the last term: `calendar.ended` (an error, naming the conservative rule) and the
    gauge below zero, distinct from any warning."""
    watch, metrics, _clock = watched(LAST_DAY + timedelta(days=3))
    with capture_logs() as logs:
        assert watch.check() == -3
    assert logs == [
        {
            "event": "calendar.ended",
            "log_level": "error",
            "last_day": "2027-07-21",
            "days_ago": 3,
            "rule": CONSERVATIVE_RULE,
        }
    ]
    assert metrics.registry.get_sample_value(GAUGE) == -3.0


def test_the_gauge_counts_the_days_left_when_scraped() -> None:
    """The gauge is read from the clock at each scrape: 60 today, 59 tomorrow, with no check."""
    _watch, metrics, clock = watched(LAST_DAY - timedelta(days=60))
    assert metrics.registry.get_sample_value(GAUGE) == 60.0
    clock.now += timedelta(days=1)
    assert metrics.registry.get_sample_value(GAUGE) == 59.0


def test_the_day_is_the_calendars_local_day() -> None:
    """23:30 UTC in British summer time is already the next day in London."""
    _watch, metrics, clock = watched(LAST_DAY - timedelta(days=60))
    clock.now = clock.now.replace(hour=23, minute=30)
    assert metrics.registry.get_sample_value(GAUGE) == 59.0


def test_a_calendar_without_term_dates_is_warned_about_and_has_no_gauge() -> None:
    """No terms: every deadline is conservative; a warning says so and no gauge is exposed."""
    metrics = Metrics()
    metrics.calendar_watch = CalendarWatch(WEEKDAYS, Clock(LAST_DAY), 60)
    with capture_logs() as logs:
        assert metrics.calendar_watch.check() is None
    assert [e["event"] for e in logs] == ["calendar.no_term_dates"]
    assert metrics.registry.get_sample_value(GAUGE) is None


async def test_the_broker_serves_the_gauge(
    police_session: aiohttp.ClientSession, broker_url: str
) -> None:
    """GET /metrics on a running broker carries the days left on its calendar (real clock)."""
    before = CALENDAR.days_left(datetime.now(CALENDAR.zone).date())
    response = await police_session.get(f"{broker_url}/metrics")
    text = await response.text()
    after = CALENDAR.days_left(datetime.now(CALENDAR.zone).date())
    lines = [line for line in text.splitlines() if line.startswith(f"{GAUGE} ")]
    assert [float(line.split()[1]) for line in lines] in ([float(before or 0)], [float(after or 0)])


async def test_the_broker_warns_at_start_up(
    start_broker: StartBroker, federation_keys: FederationKeys
) -> None:
    """A broker started 60 days before its calendar runs out logs `calendar.running_out` once,
    at start-up, before any request."""
    with capture_logs() as logs:
        await start_broker(federation_keys, clock=Clock(LAST_DAY - timedelta(days=60)))
    running_out = [e for e in logs if e["event"] == "calendar.running_out"]
    assert [(e["last_day"], e["days_left"]) for e in running_out] == [("2027-07-21", 60)]
