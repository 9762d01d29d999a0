"""The deployment files keep the promises SPEC.md makes, and agree with each other and with
the README: systemd unit, Dockerfile, .dockerignore, deploy/docker/compose.yml, the example
config, LICENSE. Docker itself does not run here: what a container would do is shown by the
same command, user, files and PID 1 position, without the container."""

from __future__ import annotations

import configparser
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import refreshd
from refreshd.cli import EXIT_CONFIG
from refreshd.config import DEFAULT_CONFIG_PATH, DaemonConfig
from refreshd.core.durations import parse_duration
from tests.support.config import window_from_now
from tests.support.daemon import assert_json_lines_only, clean_env, run_refreshd
from tests.support.nobody import as_user, shared_directory
from tests.support.pid1 import Pid1Daemon, pid_namespace_problem
from tests.support.repo import EXAMPLE_CONFIG, REPO
from tests.support.waiting import holds_for

UNIT = REPO / "systemd" / "refreshd.service"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "docker" / "compose.yml"
README = REPO / "README.md"
LICENSE = REPO / "LICENSE"
PYPROJECT = REPO / "pyproject.toml"

DEFAULTS = DaemonConfig()
DAEMON_ARGS = ["run", "-c", str(DEFAULT_CONFIG_PATH)]


# --- Reading the unit ----------------------------------------------------------------


class _UnitParser(configparser.ConfigParser):
    """A unit file as configparser sees it: keys keep their case, `$` and `%` are literal,
    and a repeated key keeps its last value, which is systemd's rule for single-valued
    settings (list settings such as LoadCredential= accumulate; we check only their shape)."""

    def __init__(self) -> None:
        super().__init__(
            strict=False,
            interpolation=None,
            delimiters=("=",),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=None,
            empty_lines_in_values=False,
        )

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_unit(text: str | None = None) -> _UnitParser:
    unit = _UnitParser()
    unit.read_string(UNIT.read_text() if text is None else text)
    return unit


@pytest.fixture(scope="module")
def service() -> configparser.SectionProxy:
    return read_unit()["Service"]


def is_yes(value: str) -> bool:
    return value.strip().lower() in {"yes", "true", "on", "1"}


_TIMESPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
    "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip


def timespan_seconds(value: str) -> float:
    """A systemd time span (systemd.time(7)): `30`, `30s`, `1min 30s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip().lower())
    assert parts, f"not a time span: {value!r}"
    return sum(float(number) * _TIMESPAN_UNITS[unit] for number, unit in parts)


# --- The unit: what SPEC.md asks of it -------------------------------------------------


def test_unit_is_type_notify_with_only_the_main_process_notifying(
    service: configparser.SectionProxy,
) -> None:
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"


def test_unit_starts_the_daemon_on_the_default_config(service: configparser.SectionProxy) -> None:
    argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(argv[0]).name == "refreshd"
    assert argv[1:] == DAEMON_ARGS


def test_unit_reload_sends_sighup_to_the_main_process(service: configparser.SectionProxy) -> None:
    argv = shlex.split(service["ExecReload"])
    assert PurePosixPath(argv[0]).name == "kill"
    assert "-HUP" in argv or ("-s" in argv and "HUP" in argv)
    assert argv[-1] == "$MAINPID"


def test_unit_has_a_watchdog(service: configparser.SectionProxy) -> None:
    assert timespan_seconds(service["WatchdogSec"]) > 0


def test_unit_restarts_on_failure_but_not_after_an_invalid_config(
    service: configparser.SectionProxy,
) -> None:
    assert service["Restart"] == "on-failure"
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()


def test_unit_stop_timeout_outlasts_shutdown_grace(service: configparser.SectionProxy) -> None:
    grace = DEFAULTS.shutdown_grace.total_seconds()
    assert timespan_seconds(service["TimeoutStopSec"]) > grace


def test_unit_runs_as_a_dynamic_user_with_its_own_state_and_config_directories(
    service: configparser.SectionProxy,
) -> None:
    assert is_yes(service["DynamicUser"])
    assert service["StateDirectory"] == "refreshd"
    assert service["ConfigurationDirectory"] == "refreshd"
    # The default state_path lies in the one directory the unit leaves writable.
    assert Path(DEFAULTS.state_path).parent == Path("/var/lib") / service["StateDirectory"]
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / service["ConfigurationDirectory"]


def load_credentials() -> dict[str, str]:
    """The unit's LoadCredential= lines, credential ID -> host path. A list setting: every
    line counts (configparser, keeping the last value of a key, would show one)."""
    found: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        key, separator, value = line.partition("=")
        if separator and key.strip() == "LoadCredential":
            credential_id, _, path = value.strip().partition(":")
            found[credential_id] = path
    return found


def test_unit_passes_passwords_as_credentials() -> None:
    credentials = load_credentials()
    assert credentials
    for credential_id, path in credentials.items():
        assert credential_id
        assert "/" not in credential_id
        assert PurePosixPath(path).is_absolute()


def test_unit_file_system_is_read_only_but_for_its_state(
    service: configparser.SectionProxy,
) -> None:
    assert service["ProtectSystem"] == "strict"
    assert is_yes(service["ProtectHome"])
    assert is_yes(service["PrivateTmp"])


def test_unit_gains_and_keeps_no_privileges(service: configparser.SectionProxy) -> None:
    assert is_yes(service["NoNewPrivileges"])
    assert service["CapabilityBoundingSet"] == ""


def test_unit_opens_only_unix_and_ip_sockets(service: configparser.SectionProxy) -> None:
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_unit_filters_system_calls_to_the_system_service_set(
    service: configparser.SectionProxy,
) -> None:
    assert "@system-service" in service["SystemCallFilter"].split()


def test_unit_is_wanted_by_multi_user_target() -> None:
    assert read_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here; the unit was checked by parsing only")
    copy = tmp_path / "refreshd.service"
    copy.write_text(_with_existing_commands(UNIT.read_text()))

    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    about_unit = [line for line in output.splitlines() if "refreshd.service" in line]
    # verify exits 0 even for unknown keys and bad values, and prints them with the
    # file's name: any such line is a real mistake in the unit.
    assert about_unit == [], "\n".join(about_unit)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {output[:500]}")


def _with_existing_commands(text: str) -> str:
    """The unit with each Exec*= program that is not on this machine (refreshd is not
    installed here) replaced by `true`, so verify judges the unit's syntax, not the host."""
    true = shutil.which("true") or "/bin/true"

    def replace(match: re.Match[str]) -> str:
        key, prefix, program, rest = match.groups()
        if Path(program).exists():
            return match.group(0)
        return f"{key}={prefix}{true}{rest}"

    return re.sub(r"(?m)^(Exec\w+)=([-@:+!]*)(\S+)(.*)$", replace, text)


# --- Reading the Dockerfile ------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec (JSON) form"
        return [str(item) for item in value]


def read_dockerfile(text: str) -> list[Instruction]:
    """Instructions, with `\\` continuations joined and comments dropped (also inside a
    continued instruction, as Docker does)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM"
        result[-1].append(instruction)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return read_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    """The final stage: what the image is."""
    return stages(dockerfile)[-1]


def the_one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert found, f"no {keyword} in the runtime stage"
    return found[-1]  # as Docker does: the last one counts


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def healthcheck_argv(stage: list[Instruction]) -> list[str]:
    args = the_one(stage, "HEALTHCHECK").args
    options, found, command = args.partition("CMD ")
    assert found, "HEALTHCHECK must run a command (HEALTHCHECK [OPTIONS] CMD [...])"
    assert all(option.startswith("--") for option in options.split())
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(item) for item in argv]


# --- The Dockerfile: what SPEC.md asks of it ---------------------------------------------


def test_image_builds_and_runs_on_python_3_11_slim(dockerfile: list[Instruction]) -> None:
    bases = [the_stage[0].args.split()[0] for the_stage in stages(dockerfile)]
    assert len(bases) >= 2, "a build stage (the wheel) and a runtime stage"
    assert set(bases) == {"python:3.11-slim"}


def test_image_runs_as_a_fixed_non_root_user(runtime: list[Instruction]) -> None:
    user, _, group = the_one(runtime, "USER").args.partition(":")
    assert user not in {"root", "0", ""}
    assert user == "10001"
    assert group in {"", "10001"}


def test_image_keeps_state_in_a_volume(runtime: list[Instruction]) -> None:
    args = the_one(runtime, "VOLUME").args
    volumes = json.loads(args) if args.startswith("[") else args.split()
    assert str(PurePosixPath(DEFAULTS.state_path).parent) in volumes


def test_image_stops_with_sigterm(runtime: list[Instruction]) -> None:
    assert the_one(runtime, "STOPSIGNAL").args == "SIGTERM"


def test_image_runs_the_daemon_as_pid_1_on_the_default_config_waiting_out_an_invalid_one(
    runtime: list[Instruction],
) -> None:
    # Exec form (a JSON list), so no shell stands between Docker and refreshd: refreshd is
    # PID 1 and gets `docker stop`'s SIGTERM and `docker kill -s HUP` itself.
    assert the_one(runtime, "ENTRYPOINT").exec_form() == ["refreshd"]
    assert the_one(runtime, "CMD").exec_form() == [*DAEMON_ARGS, "--wait-for-config"]


def test_image_logs_to_stdout_unbuffered(runtime: list[Instruction]) -> None:
    assert env_of(runtime).get("PYTHONUNBUFFERED") == "1"


def test_image_exposes_the_default_metrics_port(runtime: list[Instruction]) -> None:
    _, _, port = DEFAULTS.metrics_listen.rpartition(":")
    assert port in the_one(runtime, "EXPOSE").args.split()


def test_image_version_label_follows_the_package(runtime: list[Instruction]) -> None:
    args = [i.args for i in runtime if i.keyword == "ARG" and i.args.startswith("VERSION=")]
    assert args == [f"VERSION={refreshd.__version__}"]
    labels = " ".join(i.args for i in runtime if i.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_image_healthcheck_probes_healthz_on_the_default_metrics_port(
    runtime: list[Instruction],
) -> None:
    argv = healthcheck_argv(runtime)
    assert argv[0] == "python", "the slim image has python but no curl or wget"
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(argv))
    assert urls == [f"http://{DEFAULTS.metrics_listen}/healthz"]


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored(
    dockerfile: list[Instruction],
) -> None:
    ignored = dockerignore_matcher(DOCKERIGNORE.read_text())
    for instruction in dockerfile:
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        *sources, _destination = shlex.split(instruction.args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "refreshd/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/README.md",
        ".mypy_cache/3.11/refreshd",
        ".hypothesis/examples/x",
        "state.db",
        "tests/state/state.db-wal",
        "config/credentials/east.password",
    ],
)
def test_dockerignore_keeps_local_state_and_caches_out_of_the_build(path: str) -> None:
    assert dockerignore_matcher(DOCKERIGNORE.read_text())(path)


def dockerignore_matcher(text: str) -> Callable[[str], bool]:
    """Docker's .dockerignore rules, enough for our patterns: `*` and `?` stay inside one
    path segment, `**` spans any, a match on a directory covers what is inside it, `!`
    re-includes, and the last matching line wins."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for token in re.split(r"(\*\*/?|\*|\?)", pattern):
            if token in {"**", "**/"}:
                regex += ".*"
            elif token == "*":
                regex += "[^/]*"
            elif token == "?":
                regex += "[^/]"
            else:
                regex += re.escape(token)
        rules.append((include, re.compile(regex + "(/.*)?")))

    def ignored(path: str) -> bool:
        result = False
        for include, rule in rules:
            if rule.fullmatch(path.strip("/")):
                result = not include
        return result

    return ignored


# --- The HEALTHCHECK, run for real on this machine -------------------------------------


@pytest.fixture
def healthz_server() -> Iterator[Callable[[int], int]]:
    """Starts a server answering /healthz with the given status; returns its port."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int) -> int:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = status if self.path == "/healthz" else 404
                body = b"ok\n" if code == 200 else b"unhealthy\n"
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_healthcheck(runtime: list[Instruction], port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run by this Python, aimed at `port`."""
    argv = healthcheck_argv(runtime)
    assert argv[0] == "python"
    argv[0] = sys.executable
    code, substitutions = re.subn(
        r"(http://127\.0\.0\.1:)\d+(/healthz)", rf"\g<1>{port}\g<2>", argv[-1]
    )
    assert substitutions == 1
    argv[-1] = code
    # As in the container: no proxy between the check and the daemon.
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)


def test_healthcheck_passes_when_healthz_answers_200(
    runtime: list[Instruction], healthz_server: Callable[[int], int]
) -> None:
    result = run_healthcheck(runtime, healthz_server(200))
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_healthz_answers_503(
    runtime: list[Instruction], healthz_server: Callable[[int], int]
) -> None:
    result = run_healthcheck(runtime, healthz_server(503))
    assert result.returncode == 1
    assert "503" in result.stderr


def test_healthcheck_fails_when_nothing_listens(
    runtime: list[Instruction], refused_port: int
) -> None:
    result = run_healthcheck(runtime, refused_port)
    assert result.returncode == 1
    assert "Connection refused" in result.stderr


# --- The image's command and health check against the real daemon ----------------------


def test_image_command_runs_the_daemon_and_its_healthcheck_passes(
    runtime: list[Instruction], tmp_path: Path
) -> None:
    """ENTRYPOINT + CMD, as the container would run them (config path swapped for a temp
    one), then the HEALTHCHECK command against it: 200 while it runs."""
    entry = json.loads(the_one(runtime, "ENTRYPOINT").args)
    command = json.loads(the_one(runtime, "CMD").args)
    assert entry == ["refreshd"]
    config = tmp_path / "refreshd.toml"
    config.write_text(
        f'[daemon]\nstate_path = "{tmp_path / "state.db"}"\n'
        'metrics_listen = "127.0.0.1:0"\n'
        '[credentials.east]\nuser = "refreshd"\npassword_env = "REFRESHD_EAST_PASSWORD"\n'
        '[[servers]]\nname = "east-1"\n'
        'api_url = "http://127.0.0.1:9/vicidial/non_agent_api.php"\n'
        'credentials = "east"\nwindows = ["mon-fri 02:00-04:00"]\n',
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "refreshd", *command]
    argv[argv.index(str(DEFAULT_CONFIG_PATH))] = str(config)
    env = {"PATH": os.environ.get("PATH", ""), "REFRESHD_EAST_PASSWORD": "a-password_1"}
    daemon = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        started: dict[str, Any] = {}
        for line in daemon.stdout:  # the daemon picks the port; daemon.started says which
            started = json.loads(line)
            if started["event"] == "daemon.started":
                break
        assert started.get("event") == "daemon.started", started
        port = urlsplit(started["metrics"]).port
        assert port is not None, started
        result = run_healthcheck(runtime, port)
        assert result.returncode == 0, result.stderr
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert daemon.returncode == 0


# --- The README's systemd steps, the unit and the example config agree ------------------


def example_password_files() -> dict[str, str | None]:
    """Each [credentials.NAME] table of the example config -> its password_file (or None)."""
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    return {name: table.get("password_file") for name, table in data["credentials"].items()}


def readme_section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def readme_commands(heading: str) -> list[str]:
    """The lines of the first ```sh block in the README section, continuations joined."""
    section = readme_section(heading)
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


def test_example_config_reads_every_password_from_a_credential_file() -> None:
    # Under systemd only LoadCredential= brings a password (the unit sets no environment),
    # so every table of the example must name a credential: a bare file name.
    for name, password_file in example_password_files().items():
        assert password_file is not None, f"[credentials.{name}] has no password_file"
        assert "/" not in password_file, f"[credentials.{name}]: not a credential name"


def test_unit_loads_exactly_the_credentials_the_example_config_reads() -> None:
    credentials = load_credentials()
    assert set(credentials) == set(example_password_files().values())
    for credential_id, path in credentials.items():
        assert path == f"/etc/refreshd/credentials/{credential_id}"


def test_readme_systemd_steps_write_every_credential_the_unit_loads() -> None:
    written = {
        PurePosixPath(match).name
        for line in readme_commands("Running under systemd")
        for match in re.findall(r"> (/etc/refreshd/credentials/\S+?)\)", line)
    }
    assert written == set(load_credentials())
    quoted = re.findall(r"LoadCredential=(\S+?)`", readme_section("Running under systemd"))
    assert quoted
    for line in quoted:
        credential_id, _, path = line.partition(":")
        assert load_credentials()[credential_id] == path


def test_readme_systemd_steps_pass_check_with_the_shipped_files(tmp_path: Path) -> None:
    """The README's steps as written, /etc/refreshd moved under tmp_path: install the
    example config, write the credentials, then its `refreshd check` line."""
    etc = str(tmp_path / "etc" / "refreshd")
    lines = [
        line.replace("/etc/refreshd", etc) for line in readme_commands("Running under systemd")
    ]
    setup = [line for line in lines if line.startswith(("install ", "(umask "))]
    assert len(setup) >= 3, lines
    subprocess.run(["bash", "-euc", "\n".join(setup)], cwd=REPO, check=True, timeout=30)
    (check,) = [line for line in lines if " check -c " in line]
    assignment, _, command = check.partition(" refreshd ")
    variable, _, value = assignment.partition("=")

    done = run_refreshd(*shlex.split(command), env={variable: value})

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    for password in re.findall(r"printf '%s' '([^']+)'", "\n".join(setup)):
        assert password not in output


# --- The compose file, the Dockerfile and the example config agree ---------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose_service(compose: dict[str, Any]) -> dict[str, Any]:
    service = compose["services"]["refreshd"]
    assert isinstance(service, dict)
    return service


def image_user(runtime: list[Instruction]) -> tuple[int, int]:
    user, _, group = the_one(runtime, "USER").args.partition(":")
    return int(user), int(group or user)


def test_compose_builds_this_repositorys_image(compose_service: dict[str, Any]) -> None:
    context = (COMPOSE.parent / compose_service["build"]).resolve()
    assert context == REPO
    assert (context / "Dockerfile").is_file()


def test_compose_runs_the_images_command_as_the_images_user(
    compose_service: dict[str, Any],
) -> None:
    # No override: the image's exec-form ENTRYPOINT as PID 1 (no `init:` in front), its
    # CMD with --wait-for-config, its USER (whom the secrets' owner must match).
    assert not {"command", "entrypoint", "user", "init"} & set(compose_service)


def test_compose_restarts_always_and_an_invalid_config_waits_instead_of_looping(
    compose_service: dict[str, Any], runtime: list[Instruction]
) -> None:
    # always, not unless-stopped: `docker kill -s HUP` (the reload) marks a container as
    # manually stopped, and unless-stopped would then leave it down after a crash or reboot.
    assert compose_service["restart"] == "always"
    assert "--wait-for-config" in the_one(runtime, "CMD").exec_form()


def test_compose_stop_grace_outlasts_shutdown_grace(compose_service: dict[str, Any]) -> None:
    grace = parse_duration(compose_service["stop_grace_period"])
    assert grace > DEFAULTS.shutdown_grace


def test_compose_mounts_the_config_read_only_and_keeps_the_state_in_a_volume(
    compose: dict[str, Any], compose_service: dict[str, Any], runtime: list[Instruction]
) -> None:
    mounts = [volume.split(":") for volume in compose_service["volumes"]]
    assert ["./refreshd.toml", str(DEFAULT_CONFIG_PATH), "ro"] in mounts
    state_dir = str(PurePosixPath(DEFAULTS.state_path).parent)
    (state,) = [mount for mount in mounts if mount[1] == state_dir]
    assert state[0] in compose["volumes"], "a named volume: a new one starts owned by uid 10001"
    assert state_dir in json.loads(the_one(runtime, "VOLUME").args)


def compose_secret_files(compose: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """Each secret's name under /run/secrets -> the host file compose mounts there."""
    mounted: dict[str, str] = {}
    for secret in service["secrets"]:
        assert isinstance(secret, dict), "the long syntax, with a target per secret"
        # Compose applies no uid, gid or mode to a file secret (a bind mount keeps the host
        # file's): the host file's owner is what counts, as the comments say.
        assert not {"uid", "gid", "mode"} & set(secret)
        mounted[secret["target"]] = compose["secrets"][secret["source"]]["file"]
    return mounted


def test_compose_secrets_are_the_password_files_the_example_config_reads(
    compose: dict[str, Any], compose_service: dict[str, Any]
) -> None:
    assert compose_service["environment"]["CREDENTIALS_DIRECTORY"] == "/run/secrets"
    mounted = compose_secret_files(compose, compose_service)
    assert set(mounted) == set(example_password_files().values())
    for target, host_file in mounted.items():
        assert host_file == f"./secrets/{target}"


def test_compose_and_readme_give_the_secret_files_to_the_images_user(
    runtime: list[Instruction],
) -> None:
    uid, gid = image_user(runtime)
    for text in (COMPOSE.read_text(), readme_section("As a Docker sidecar")):
        assert f"chown {uid}:{gid} secrets/*.password" in text


def test_readme_points_at_the_shipped_compose_file_rather_than_a_copy() -> None:
    section = readme_section("As a Docker sidecar")
    assert "(deploy/docker/compose.yml)" in section
    assert "```yaml" not in section


def docker_runs(text: str) -> list[list[str]]:
    """Each `docker run` command in `text` (README or Dockerfile comments), as argv."""
    lines = [re.sub(r"^#\s*(\w+:)?\s*", "", line) for line in text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        shlex.split(line[line.index("docker run") :])
        for line in joined.splitlines()
        if "docker run" in line
    ]


def run_options(argv: list[str]) -> set[tuple[str, str]]:
    """The -e/--env-file/-v options of a `docker run` argv."""
    pairs = itertools.pairwise(argv)
    return {(flag, value) for flag, value in pairs if flag in {"-e", "--env-file", "-v"}}


@pytest.mark.parametrize("document", [README, DOCKERFILE], ids=["README", "Dockerfile"])
def test_docker_run_check_gets_the_daemons_environment_and_secrets(document: Path) -> None:
    """`check` reads the passwords: it needs the daemon's -e/--env-file and mounts (all but
    the state volume)."""
    runs = docker_runs(document.read_text())
    (check,) = [argv for argv in runs if "check" in argv]
    (daemon,) = [argv for argv in runs if "-d" in argv]
    state_dir = str(PurePosixPath(DEFAULTS.state_path).parent)
    needed = {
        (flag, value) for flag, value in run_options(daemon) if not value.endswith(":" + state_dir)
    }
    assert needed <= run_options(check)
    assert any(flag != "-v" or "/run/secrets" in value for flag, value in needed)


# --- LICENSE -------------------------------------------------------------------------------


def test_license_file_is_the_license_pyproject_and_the_image_name(
    dockerfile: list[Instruction], runtime: list[Instruction]
) -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["license"]
    assert declared == "AGPL-3.0-or-later"
    text = LICENSE.read_text()
    assert text.split("\n", 2)[:2] == [
        " " * 20 + "GNU AFFERO GENERAL PUBLIC LICENSE",
        " " * 23 + "Version 3, 19 November 2007",
    ]
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text
    assert text.rstrip().endswith("<https://www.gnu.org/licenses/>.")
    labels = " ".join(i.args for i in runtime if i.keyword == "LABEL")
    assert f'org.opencontainers.image.licenses="{declared}"' in labels
    # The wheel, and so the image, carries the license text.
    copied = [shlex.split(i.args) for i in dockerfile if i.keyword == "COPY"]
    assert any("LICENSE" in argv[:-1] for argv in copied)


# --- As the container runs it: the image's user, secrets and command, as PID 1 -------------


class Container:
    """A directory laid out as compose lays out the container (config, /run/secrets, the
    state volume), owned as compose leaves it: the state and, as the README says, the
    secret files belong to the image's user."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid
        self.config = root / "refreshd.toml"
        self.secrets = root / "run" / "secrets"
        self.state = root / "state"
        self.secrets.mkdir(parents=True)
        self.secrets.parent.chmod(0o755)
        self.secrets.chmod(0o755)
        self.state.mkdir()
        os.chown(self.state, uid, gid)

    def secret(self, name: str, password: str, *, owner: tuple[int, int], mode: int) -> None:
        path = self.secrets / name
        path.write_text(password)
        os.chown(path, *owner)
        path.chmod(mode)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)
        self.config.chmod(0o644)

    @property
    def env(self) -> dict[str, str]:
        return {"CREDENTIALS_DIRECTORY": str(self.secrets)}


@pytest.fixture
def container(runtime: list[Instruction]) -> Iterator[Container]:
    with shared_directory() as root:
        yield Container(root, *image_user(runtime))


def test_check_passes_as_the_images_user_with_the_secrets_as_the_readme_says(
    container: Container,
) -> None:
    owner = (container.uid, container.gid)
    for name in filter(None, example_password_files().values()):
        container.secret(name, f"{name.split('.')[0]}-pass-1", owner=owner, mode=0o400)
    container.write_config(EXAMPLE_CONFIG.read_text())

    done = subprocess.run(
        [*as_user(container.uid, container.gid), "check", "-c", str(container.config)],
        capture_output=True, text=True, timeout=60, env=clean_env(container.env), check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "pass-1" not in done.stdout + done.stderr


def test_check_refuses_a_root_owned_secret_naming_the_file(container: Container) -> None:
    """A host file left root-owned 0600: the bind mount keeps that, and uid 10001 cannot
    read it. A config error naming the file, never a traceback or the password."""
    for name in filter(None, example_password_files().values()):
        container.secret(name, "secret-pass-1", owner=(0, 0), mode=0o600)
    container.write_config(EXAMPLE_CONFIG.read_text())

    done = subprocess.run(
        [*as_user(container.uid, container.gid), "check", "-c", str(container.config)],
        capture_output=True, text=True, timeout=60, env=clean_env(container.env), check=False,
    )  # fmt: skip

    assert done.returncode == EXIT_CONFIG
    assert "credentials.east.password_file" in done.stderr
    assert "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr
    assert "secret-pass-1" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def pid_namespaces() -> None:
    problem = pid_namespace_problem()
    if problem is not None:
        pytest.skip(problem)


def container_config(container: Container, refused_port: int, *, servers: int = 1) -> str:
    """A config for the container: windows that open in six hours (nothing is called),
    metrics on a port of the daemon's choosing. servers=0 makes it invalid."""
    text = (
        f'[daemon]\nstate_path = "{container.state / "state.db"}"\n'
        'metrics_listen = "127.0.0.1:0"\n'
        '[credentials.east]\nuser = "refreshd"\npassword_file = "east.password"\n'
    )
    for number in range(1, servers + 1):
        text += (
            f'[[servers]]\nname = "east-{number}"\n'
            f'api_url = "http://127.0.0.1:{refused_port}/vicidial/non_agent_api.php"\n'
            f'credentials = "east"\nwindows = ["{window_from_now(6 * 3600, 60)}"]\n'
        )
    return text


def start_image_command(container: Container, runtime: list[Instruction]) -> Pid1Daemon:
    """The image's ENTRYPOINT and CMD (config path swapped), run as the image's user and as
    PID 1 of a PID namespace of its own."""
    entrypoint = the_one(runtime, "ENTRYPOINT").exec_form()
    assert entrypoint == ["refreshd"]  # as_user() runs refreshd's main
    command = the_one(runtime, "CMD").exec_form()
    command[command.index(str(DEFAULT_CONFIG_PATH))] = str(container.config)
    argv = [*as_user(container.uid, container.gid), *command]
    daemon = Pid1Daemon(container.config, argv, env=container.env)
    daemon.start()
    return daemon


def start_on_an_invalid_config(
    container: Container, runtime: list[Instruction], refused_port: int
) -> Pid1Daemon:
    """The image's command as PID 1 on a config with no servers (invalid), east's password
    already in its secrets file for the configs that follow."""
    container.secret(
        "east.password", "east-pass-1", owner=(container.uid, container.gid), mode=0o400
    )
    container.write_config(container_config(container, refused_port, servers=0))
    return start_image_command(container, runtime)


@pytest.mark.usefixtures("pid_namespaces")
def test_image_command_as_pid_1_waits_on_an_invalid_config_then_starts_reloads_and_stops(
    container: Container, runtime: list[Instruction], refused_port: int
) -> None:
    daemon = start_on_an_invalid_config(container, runtime, refused_port)
    try:
        (rejected,) = daemon.wait_for("config.rejected", timeout=30)
        assert rejected["waiting"] == "for SIGHUP once the file is fixed"
        # No exit 78 for a restart policy to loop on: it waits (unhealthy, no metrics).
        holds_for(
            lambda: daemon.alive() and not daemon.matching("daemon.started"),
            seconds=2,
            what="waiting on the invalid config",
        )

        container.write_config(container_config(container, refused_port, servers=1))
        daemon.signal(signal.SIGHUP)  # as `docker kill -s HUP`: to PID 1, from outside
        (started,) = daemon.wait_for("daemon.started", timeout=30)
        assert started["pid"] == 1
        assert started["servers"] == 1
        assert run_healthcheck(runtime, daemon.metrics_port()).returncode == 0

        container.write_config(container_config(container, refused_port, servers=2))
        daemon.signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_for("config.reloaded", timeout=30)
        assert reloaded["servers"] == 2
        assert reloaded["added"] == ["east-2"]
    finally:
        code = daemon.stop(timeout=30)  # SIGTERM, as `docker stop`
    assert code == 0
    (stopped,) = daemon.matching("daemon.stopped")
    assert stopped["clean"] is True
    assert_json_lines_only(daemon)
    assert "east-pass-1" not in daemon.stdout + daemon.stderr


@pytest.mark.usefixtures("pid_namespaces")
def test_image_command_as_pid_1_stops_on_sigterm_while_waiting_with_exit_78(
    container: Container, runtime: list[Instruction], refused_port: int
) -> None:
    daemon = start_on_an_invalid_config(container, runtime, refused_port)
    try:
        daemon.wait_for("config.rejected", timeout=30)
    finally:
        code = daemon.stop(timeout=30)
    assert code == EXIT_CONFIG
    (stopped,) = daemon.matching("daemon.stopped")
    assert stopped["signal"] == "SIGTERM"
    assert stopped["config"] == "invalid"
    assert_json_lines_only(daemon)
