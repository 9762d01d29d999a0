"""The deployment files keep the promises SPEC.md makes: systemd unit, Dockerfile, .dockerignore."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

import refreshd
from refreshd.cli import EXIT_CONFIG
from refreshd.config import DEFAULT_CONFIG_PATH, DaemonConfig
from tests.support.repo import REPO

UNIT = REPO / "systemd" / "refreshd.service"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

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


def test_unit_passes_passwords_as_credentials(service: configparser.SectionProxy) -> None:
    credential_id, _, path = service["LoadCredential"].partition(":")
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


def test_image_runs_the_daemon_on_the_default_config(runtime: list[Instruction]) -> None:
    assert the_one(runtime, "ENTRYPOINT").exec_form() == ["refreshd"]
    assert the_one(runtime, "CMD").exec_form() == DAEMON_ARGS


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
