"""deploy/docker/compose.vicidial.yml: refreshd beside a VICIdial web container. The file
parses, puts both services on one network, mounts the shipped sidecar config read-only,
passes the password as a secret and keeps the state in a volume; that config passes the
real `refreshd check`; the healthcheck asks /healthz on the config's metrics_listen, and
answers 0 against a real daemon run on the same config. Docker itself does not run here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from refreshd.config import DEFAULT_CONFIG_PATH, DaemonConfig
from tests.support.daemon import StartDaemon, run_refreshd
from tests.support.repo import REPO

COMPOSE = REPO / "deploy" / "docker" / "compose.vicidial.yml"
SIDECAR_CONFIG = REPO / "deploy" / "docker" / "refreshd.sidecar.toml"
PASSWORD = "sidecar-pass-12345"
STATE_DIR = str(PurePosixPath(DaemonConfig().state_path).parent)
URL = re.compile(r"https?://[^'\"\s]+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def refreshd(compose: dict[str, Any]) -> dict[str, Any]:
    service = compose["services"]["refreshd"]
    assert isinstance(service, dict)
    return service


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Target -> (source, mode) of the short volume syntax."""
    found = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    (url,) = URL.findall(" ".join(test))
    return url


def test_the_sidecar_and_the_web_container_share_a_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"vicidial-web", "refreshd"}
    shared = set(services["refreshd"]["networks"]) & set(services["vicidial-web"]["networks"])
    assert shared
    assert shared <= set(compose["networks"])
    assert "vicidial-web" in services["refreshd"]["depends_on"]
    # The config calls the web container by its service name on that network.
    config = tomllib.loads(SIDECAR_CONFIG.read_text(encoding="utf-8"))
    hosts = {urlsplit(server["api_url"]).hostname for server in config["servers"]}
    assert hosts == {"vicidial-web"}


def test_it_mounts_the_shipped_sidecar_config_read_only_and_keeps_state_in_a_volume(
    compose: dict[str, Any], refreshd: dict[str, Any]
) -> None:
    found = mounts(refreshd)
    source, mode = found[str(DEFAULT_CONFIG_PATH)]
    assert (COMPOSE.parent / source).resolve() == SIDECAR_CONFIG
    assert mode == "ro"
    state, state_mode = found[STATE_DIR]
    assert state in compose["volumes"]  # a named volume
    assert state_mode == "rw"


def test_the_password_is_a_secret_named_as_the_configs_password_file(
    compose: dict[str, Any], refreshd: dict[str, Any]
) -> None:
    config = tomllib.loads(SIDECAR_CONFIG.read_text(encoding="utf-8"))
    files = {table["password_file"] for table in config["credentials"].values()}
    directory = refreshd["environment"]["CREDENTIALS_DIRECTORY"]
    targets = {}
    for secret in refreshd["secrets"]:
        targets[secret["target"]] = compose["secrets"][secret["source"]]["file"]
    assert directory == "/run/secrets"  # where compose mounts secrets
    assert files == set(targets)
    text = COMPOSE.read_text() + SIDECAR_CONFIG.read_text()
    assert "password =" not in text  # no password in either file


def test_the_healthcheck_asks_healthz_on_the_configs_metrics_listen(
    refreshd: dict[str, Any],
) -> None:
    config = tomllib.loads(SIDECAR_CONFIG.read_text(encoding="utf-8"))
    host, _, port = config["daemon"]["metrics_listen"].rpartition(":")
    url = urlsplit(healthcheck_url(refreshd))
    assert url.path == "/healthz"
    assert url.port == int(port)
    # Inside the container the check reaches the daemon on loopback, whichever address
    # the config binds (loopback or all of them).
    assert url.hostname == "127.0.0.1"
    assert host in {"127.0.0.1", "0.0.0.0"}  # noqa: S104 (a value compared, not bound)


def test_the_mounted_config_passes_refreshd_check(tmp_path: Path) -> None:
    (tmp_path / "vicidial.password").write_text(PASSWORD)
    done = run_refreshd("check", "-c", SIDECAR_CONFIG, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "valid: 1 server(s)" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_the_healthcheck_passes_against_a_real_daemon_on_that_config(
    refreshd: dict[str, Any], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """The sidecar config with only what a test must change (the state file, a port of its
    own), and the compose healthcheck's command aimed at that port."""
    (tmp_path / "vicidial.password").write_text(PASSWORD)
    text = SIDECAR_CONFIG.read_text(encoding="utf-8")
    text = text.replace('metrics_listen = "127.0.0.1:9464"', 'metrics_listen = "127.0.0.1:0"')
    text = text.replace("[daemon]\n", f'[daemon]\nstate_path = "{tmp_path / "state.db"}"\n')
    config = tmp_path / "refreshd.toml"
    config.write_text(text)
    daemon = start_daemon(config, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    port = daemon.metrics_port()

    argv = [str(arg) for arg in refreshd["healthcheck"]["test"][1:]]
    assert argv[0] == "python"
    argv[0] = sys.executable
    argv[-1], count = re.subn(r"127\.0\.0\.1:9464/", f"127.0.0.1:{port}/", argv[-1])
    assert count == 1
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in daemon.stdout + daemon.stderr


# deploy/docker/compose.ha.yml: three sidecars sharing one MariaDB (docs/HA.md).
HA_COMPOSE = REPO / "deploy" / "docker" / "compose.ha.yml"
HA_CONFIG = REPO / "deploy" / "docker" / "refreshd.ha.toml"


def test_three_sidecars_share_one_mariadb_each_its_own_instance_name() -> None:
    document = yaml.safe_load(HA_COMPOSE.read_text(encoding="utf-8"))
    services = document["services"]
    sidecars = {name: s for name, s in services.items() if name.startswith("refreshd-")}
    assert len(sidecars) == 3
    names = {s["environment"]["REFRESHD_STATE__INSTANCE"] for s in sidecars.values()}
    assert names == {"web-1", "web-2", "web-3"}
    config = tomllib.loads(HA_CONFIG.read_text(encoding="utf-8"))
    state = urlsplit(config["state"]["url"])
    # The state URL names the compose MariaDB by its service name, and its database.
    assert state.scheme == "mysql"
    assert state.hostname in services
    assert services[state.hostname]["image"].startswith("mariadb")
    assert services[state.hostname]["environment"]["MARIADB_DATABASE"] == state.path.strip("/")
    for sidecar in sidecars.values():
        assert mounts(sidecar)["/etc/refreshd/refreshd.toml"] == ("./refreshd.ha.toml", "ro")
        secrets = {each["target"] for each in sidecar["secrets"]}
        assert {config["state"]["password_file"], "vicidial.password"} <= secrets
        assert urlsplit(healthcheck_url(sidecar)).port == 9464


@pytest.mark.parametrize("instance", ["web-1", "web-2", "web-3"])
def test_the_ha_config_passes_refreshd_check_as_each_instance(
    tmp_path: Path, instance: str
) -> None:
    for secret in ("vicidial.password", "state.password"):
        (tmp_path / secret).write_text(PASSWORD)
    done = run_refreshd(
        "check",
        "-c",
        HA_CONFIG,
        env={"CREDENTIALS_DIRECTORY": str(tmp_path), "REFRESHD_STATE__INSTANCE": instance},
    )
    assert done.returncode == 0, done.stderr
    assert "valid: 1 server(s)" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
