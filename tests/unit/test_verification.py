"""The pure verdict on a refresh, and the database URL's rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from refreshd.core.verification import Applied, NotApplied, verdict
from refreshd.dburl import DatabaseUrl, parse_database_url

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
LIMIT = timedelta(minutes=3)
BOXES = [("10.0.0.11", "dial1"), ("10.0.0.12", "dial2")]


def test_no_flag_left_is_applied_at_once_whatever_the_time() -> None:
    assert verdict(T0, T0 + timedelta(seconds=61), LIMIT, boxes=BOXES) == Applied(61.0, 2)


def test_a_flag_left_waits_until_the_limit_then_names_the_box() -> None:
    flagged = [BOXES[1]]
    assert (
        verdict(T0, T0 + LIMIT - timedelta(seconds=1), LIMIT, boxes=BOXES, flagged=flagged) is None
    )
    assert verdict(T0, T0 + LIMIT, LIMIT, boxes=BOXES, flagged=flagged) == NotApplied(
        180.0, (BOXES[1],), 2
    )


def test_an_unreadable_database_waits_then_says_why() -> None:
    assert verdict(T0, T0 + timedelta(seconds=5), LIMIT, boxes=None, unread="down") is None
    assert verdict(T0, T0 + LIMIT, LIMIT, boxes=None, unread="down") == NotApplied(
        180.0, (), 0, "down"
    )


def test_a_clock_stepped_back_never_gives_negative_seconds() -> None:
    assert verdict(T0, T0 - timedelta(seconds=30), LIMIT, boxes=BOXES) == Applied(0.0, 2)


def test_a_database_url_reads_back() -> None:
    url = parse_database_url("mysql://refreshd_ro@vicidb-east:3307/asterisk")
    assert url == DatabaseUrl("refreshd_ro", "vicidb-east", 3307, "asterisk")
    assert str(url) == "mysql://refreshd_ro@vicidb-east:3307/asterisk"
    assert parse_database_url("postgres://r@h/d", ("postgresql",)).port == 5432
    assert parse_database_url("mariadb://u@h/asterisk").port == 3306


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mysql://u:secret-pw@h/asterisk", "a password in the URL"),
        ("postgresql://u@h/asterisk", "scheme must be mysql://"),
        ("mysql://h/asterisk", "give a user, a host and a database"),
        ("mysql://u@h/", "give a user, a host and a database"),
        ("mysql://u@h:99999/asterisk", "not a database URL"),
        ("mysql://u@h/asterisk?ssl=1", "no ?options"),
    ],
)
def test_a_bad_database_url_says_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        parse_database_url(text)
    assert "secret-pw" not in str(caught.value)
