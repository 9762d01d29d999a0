"""The Grafana dashboard in deploy/grafana/ (and the alert rules beside it) ask only for
series a real daemon serves: every metric name and label in every expression is checked
against the /metrics of a real `refreshd run`, brought into every state the panels show
(a verified success, a suspension, a credentials wait, a reload), so that every family the
expressions use has samples, and so its labels. The PromQL is read by
tests/support/promql.py (its own unit test shows it fails on a wrong name or label). The
dashboard's shape is checked here too: a datasource variable, no hard-coded datasource UID,
the panels the README names."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from refreshd.simulator import Simulator, SimUser
from refreshd.verify import DatabaseUrl
from tests.support.alerts import RULES, scrape
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    NOAPI_PASSWORD,
    NOAPI_USER,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import StartDaemon
from tests.support.databases import telephony_boxes, verified_cluster
from tests.support.promql import problems, served
from tests.support.repo import REPO
from tests.support.simulator import api_path

DASHBOARD = REPO / "deploy" / "grafana" / "refreshd.json"
DB_PASSWORD = "ro-Pass_4567"
GHOST_USER, GHOST_PASSWORD = "ghost", "ghost-pass-404"  # unknown to VICIdial: a refused login
SECRETS = (GOOD_PASSWORD, NOAPI_PASSWORD, GHOST_PASSWORD, DB_PASSWORD)
# Grafana's template query `label_values(SELECTOR, LABEL)`.
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$")
PANEL_UID = "${datasource}"


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


def expressions() -> dict[str, str]:
    """Every PromQL expression shipped, by where it is: each panel target, each template
    variable's query (label_values' selector), each alert rule."""
    found: dict[str, str] = {}
    for panel in panels():
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: not a label_values() query: {text}"
            # The label asked for must be on the selected metric: a matcher says so.
            selector = match["selector"].strip()
            label = f'{match["label"]}=~".*"'
            if selector.endswith("}"):
                selector = f"{selector[:-1]}, {label}}}"
            else:
                selector = f"{selector}{{{label}}}"
            found[f"variable {variable['name']}"] = selector
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            found[f"rule {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return found


# --- The shape of the dashboard ------------------------------------------------------------


def test_the_dashboard_asks_for_its_prometheus_as_a_variable_and_hard_codes_no_uid() -> None:
    document = dashboard()
    assert document["schemaVersion"] >= 39  # Grafana 11 and later
    (source,) = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    assert source["name"] == PANEL_UID.removeprefix("${").removesuffix("}")
    assert "__inputs" not in document  # no import-time datasource to choose
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text(encoding="utf-8"))
    assert set(uids) <= {PANEL_UID, "-- Grafana --", document["uid"]}, set(uids)
    for panel in panels():
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        assert sources == [{"type": "prometheus", "uid": PANEL_UID}] * len(sources), panel["title"]


def test_the_panels_fit_the_grid_without_overlapping_and_have_ids_of_their_own() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))


def test_the_dashboard_has_the_fleet_table_and_the_panels_the_readme_names() -> None:
    by_title = {panel["title"]: panel for panel in panels()}
    fleet = by_title["Fleet"]
    assert fleet["type"] == "table"
    renamed = next(t for t in fleet["transformations"] if t["id"] == "organize")
    columns = set(renamed["options"]["renameByName"].values())
    assert {"Server", "Last outcome", "Last success", "Suspended", "Waiting", "Next run in",
            "Boxes not applied"} <= columns  # fmt: skip
    for title in ("Firing lag", "Call duration"):
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        assert exprs, title
        assert all(e.startswith("histogram_quantile(") for e in exprs), title
    assert "rate(refreshd_refresh_total" in by_title["Refreshes by outcome"]["targets"][0]["expr"]
    waiting = " ".join(t["expr"] for t in by_title["Suspended, waiting, not applied"]["targets"])
    for name in ("refreshd_server_suspended", "refreshd_credentials_waiting",
                 "refreshd_unapplied_servers"):  # fmt: skip
        assert name in waiting
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "deploy/grafana/refreshd.json" in readme


# --- Every name and label against a real daemon's /metrics ---------------------------------


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    users = [
        SimUser(GOOD_USER, GOOD_PASSWORD),
        SimUser(NOAPI_USER, NOAPI_PASSWORD, api_access=False),
    ]
    with verified_cluster(
        telephony_boxes(), DB_PASSWORD, users=users, keepalive_interval=1.0
    ) as found:
        yield found


def test_every_expression_uses_only_names_and_labels_a_real_daemon_serves(
    tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], start_daemon: StartDaemon
) -> None:
    sim, database = cluster
    window = [window_from_now(0, 600)]  # open now: each server is called at once
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {"name": "east", "api_url": sim.url + api_path(0), "credentials": "main",
             "windows": window, "database": "east", "verify_timeout": "10s"},
            {"name": "noapi", "api_url": sim.url + api_path(1), "credentials": "noapi",
             "windows": window},
            {"name": "ghost", "api_url": sim.url + api_path(2), "credentials": "ghost",
             "windows": window},
        ],
        credentials={
            "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
            "noapi": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},
            "ghost": {"user": GHOST_USER, "password": GHOST_PASSWORD},
        },
        databases={"east": {"url": str(database), "password_env": "EAST_DB_PASSWORD"}},
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": "127.0.0.1:0",
                "shutdown_grace": "1s"},
    )  # fmt: skip
    daemon = start_daemon(config, env={"EAST_DB_PASSWORD": DB_PASSWORD})
    daemon.wait_for("refresh.applied", server="east", timeout=60)
    daemon.wait_for("server.suspended", server="noapi")
    daemon.wait_for("credentials.suspended", credentials="ghost")
    daemon.signal(signal.SIGHUP)  # a reload: the reload counter gets its first sample
    daemon.wait_for("config.reloaded")

    text = scrape(daemon.metrics_port()).text
    assert not [secret for secret in SECRETS if secret in text]
    families = list(text_string_to_metric_families(text))
    # Only samples count: a labelled family with none (HELP and TYPE only) shows no labels,
    # so a name used with no sample here is reported "not served" rather than passed.
    serving = served((s.name, s.labels) for family in families for s in family.samples)
    # The series the panels were added for, with the values this daemon's state gives.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families for s in family.samples}  # fmt: skip
    assert (
        "refreshd_last_call_timestamp_seconds",
        (("outcome", "ok"), ("server", "east")),
    ) in samples
    assert (
        samples[("refreshd_server_credentials", (("credentials", "ghost"), ("server", "ghost")))]
        == 1
    )
    assert samples[("refreshd_refresh_lag_seconds_count", ())] >= 3
    assert samples[("refreshd_unapplied_servers", (("server", "east"),))] == 0

    found = {where: problems(expr, serving) for where, expr in expressions().items()}
    assert {where: wrong for where, wrong in found.items() if wrong} == {}
    assert len(found) > 30  # every panel target, variable and rule was read
