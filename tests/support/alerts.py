"""The shipped Prometheus rules under `promtool test rules`, fed with what a real daemon's
/metrics showed: scrapes become promtool's input series (one scrape per step, then held),
expected alerts are rendered from the rules file itself, and promtool judges."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.repo import REPO

RULES = REPO / "deploy" / "prometheus" / "refreshd.rules.yml"
# The labels Prometheus adds to every scraped series; the rules' `up` selector names the job.
JOB, INSTANCE = "refreshd", "refreshd:9464"
STEP = 60  # seconds of promtool time between two scrapes (its `interval`)

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (name, sorted labels)


def promtool() -> str:
    """promtool's path. Missing: a failure under CI=true, else the test is skipped."""
    found = shutil.which("promtool")
    if found is not None:
        return found
    why = (
        "promtool is not installed (Debian package `prometheus`; `make test-tools` "
        "installs it when run as root)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@dataclass(frozen=True)
class Scrape:
    """One scrape: when, the text, and its samples; `samples` None when it failed (up 0)."""

    at: float
    text: str
    samples: Mapping[SeriesKey, float] | None

    def value(self, name: str, **labels: str) -> float | None:
        if self.samples is None:
            return None
        return self.samples.get((name, tuple(sorted(labels.items()))))


def scrape(port: int) -> Scrape:
    """GET /metrics as Prometheus would; a refused connection is a failed scrape."""
    at = time.time()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError):
        return Scrape(at, "", None)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(at, text, samples)


def input_series(
    scrapes: Sequence[Scrape],
    *,
    hold: int,
    keep: Callable[[Mapping[str, str]], bool] = lambda labels: True,
    growth: Mapping[str, float] | None = None,
    up: bool = True,
) -> list[dict[str, str]]:
    """promtool input series: scrape k at promtool time k x STEP, the last value then held
    for `hold` more steps (growing by `growth[name]` per second: a gauge such as the
    oldest call's age keeps counting while nothing changes). Unix-time gauges are moved
    onto promtool's clock, which starts at 0: each keeps its age at its scrape. `keep`
    chooses series by their labels; `up`: add the `up` series Prometheus records."""
    keys: dict[SeriesKey, None] = {}
    for one in scrapes:
        keys.update(dict.fromkeys(one.samples or {}))
    series: list[dict[str, str]] = []
    for name, labels in keys:
        if not keep(dict(labels)):
            continue
        values: list[float | None] = []
        for k, one in enumerate(scrapes):
            value = None if one.samples is None else one.samples.get((name, labels))
            if value is not None and name.endswith("_timestamp_seconds"):
                value = value - one.at + k * STEP
            values.append(value)
        rate = (growth or {}).get(name, 0.0) * STEP
        series.append({"series": _selector(name, labels), "values": _values(values, hold, rate)})
    if up:
        ups: list[float | None] = [0.0 if one.samples is None else 1.0 for one in scrapes]
        series.append({"series": _selector("up", ()), "values": _values(ups, hold, 0.0)})
    return series


def _selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    every = {**dict(labels), "job": JOB, "instance": INSTANCE}
    inside = ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(every.items()))
    return f"{name}{{{inside}}}"


def _values(values: Sequence[float | None], hold: int, rate: float) -> str:
    text = " ".join("_" if value is None else repr(value) for value in values)
    last = values[-1]
    if last is None:
        return f"{text} _x{hold}"
    return f"{text} {last + rate!r}+{rate!r}x{hold - 1}"


def rules() -> dict[str, dict[str, Any]]:
    """The shipped alerting rules by alert name."""
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def alert(name: str, *, scraped: bool = True, **labels: str) -> dict[str, Any]:
    """One expected alert: the rule's labels and annotations, rendered for `labels` (the
    firing series' labels besides the job, and the instance a `scraped` series has; an
    absent() alert has the job only)."""
    rule = rules()[name]
    where = {"job": JOB, **({"instance": INSTANCE} if scraped else {})}
    every = {**labels, **where, **rule.get("labels", {})}

    def render(text: str) -> str:
        done = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: every[m.group(1)], text)
        assert "{{" not in done, f"{name}: an annotation the test cannot render: {text}"
        return done

    annotations = {key: render(value) for key, value in rule.get("annotations", {}).items()}
    return {"exp_labels": every, "exp_annotations": annotations}


def expect(at: str, firing: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """alert_rule_test entries at promtool time `at`: every shipped alert, each with the
    alerts it must show then (none unless named in `firing`)."""
    unknown = set(firing) - set(rules())
    assert not unknown, f"no such alert in {RULES.name}: {unknown}"
    return [
        {"eval_time": at, "alertname": name, "exp_alerts": firing.get(name, [])} for name in rules()
    ]


def run_promtool(directory: Path, cases: Sequence[Mapping[str, Any]]) -> str:
    """`promtool test rules` on the shipped rules with these test cases (each a dict with
    input_series and alert_rule_test); fails the test with promtool's report."""
    test_file = directory / "refreshd.rules.test.yml"
    document = {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{STEP}s",
        "tests": [{"interval": f"{STEP}s", **case} for case in cases],
    }
    test_file.write_text(json.dumps(document, indent=1), encoding="utf-8")  # JSON is YAML
    done = subprocess.run(
        [promtool(), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool test rules failed ({test_file}):\n{report[-6000:]}"
    return report
