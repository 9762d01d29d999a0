"""The checker behind the dashboard and rule tests (tests/support/promql.py): it finds the
metric names and labels of real PromQL, and it fails on a wrong name or label."""

from __future__ import annotations

import pytest

from tests.support.promql import problems, uses

SERVED = {
    "refreshd_refresh_total": {"server", "outcome"},
    "refreshd_refresh_duration_seconds_bucket": {"le"},
    "refreshd_server_suspended": {"server"},
    "refreshd_server_credentials": {"server", "credentials"},
    "refreshd_credentials_waiting": {"credentials", "reason"},
}


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        (
            'sum by (outcome) (rate(refreshd_refresh_total{job=~"$job", server=~"$server"}'
            "[$__rate_interval]))",
            {"refreshd_refresh_total": {"job", "server"}},
            {"outcome"},
        ),
        (
            "histogram_quantile(0.95, sum(rate(refreshd_refresh_duration_seconds_bucket[5m]))"
            " by (le))",
            {"refreshd_refresh_duration_seconds_bucket": set()},
            {"le"},
        ),
        (
            # A string holding names, a subquery, offset and a duration are no metrics.
            'max_over_time(up{job="refreshd_refresh_total or x"}[1h:1m] offset 1h) > 3600',
            {"up": {"job"}},
            set(),
        ),
        (
            "max by (server, reason) (refreshd_server_credentials * on (job, credentials)"
            " group_left (reason) (refreshd_credentials_waiting == 1))",
            {"refreshd_server_credentials": set(), "refreshd_credentials_waiting": set()},
            {"server", "reason", "job", "credentials"},
        ),
        ("time() - refreshd_server_suspended and bool 1", {"refreshd_server_suspended": set()},
         set()),
    ],
)  # fmt: skip
def test_it_finds_the_names_and_labels_of_real_promql(
    expr: str, metrics: dict[str, set[str]], grouping: set[str]
) -> None:
    found = uses(expr)
    assert found.metrics == metrics
    assert found.grouping == grouping
    assert problems(expr, SERVED) == []


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(refreshd_refresh[5m])", ["refreshd_refresh: not served"]),
        ("refreshd_server_suspend == 1", ["refreshd_server_suspend: not served"]),
        ('refreshd_server_suspended{servr="a"}', ["refreshd_server_suspended: no label 'servr'"]),
        (
            "sum by (outcome) (refreshd_server_suspended)",
            ["grouping label 'outcome': on none of ['refreshd_server_suspended']"],
        ),
        ("sum(refreshd_refresh_duration_seconds{le='1'})",
         ["refreshd_refresh_duration_seconds: not served"]),
    ],
)  # fmt: skip
def test_it_names_a_wrong_metric_or_label(expr: str, expected: list[str]) -> None:
    assert problems(expr, SERVED) == expected


@pytest.mark.parametrize("expr", ['{__name__="refreshd_refresh_total"}', "sum(x{a=b})", "a["])
def test_it_refuses_what_it_cannot_read_rather_than_passing_it(expr: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read|without a metric name|unbalanced"):
        problems(expr, SERVED)
