"""`python -m build` makes a wheel and an sdist that install and run: built from a copy of
the source tree (the build writes refreshd.egg-info and build/ beside the sources), the
wheel installed into a fresh venv and with pipx, each `refreshd` then run from outside the
repository. `pytest -m packaging` runs these alone.

`python -m build` builds the sdist first and the wheel from the unpacked sdist, so a file
the sdist lacks breaks the wheel's build here too. Build isolation stays on: its
setuptools comes from the package index (the machine's mirror), as a user's build would.
Time on the shared 2-core machine: about 6 s to build, 15 to 25 s for each install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import refreshd
from tests.support.repo import EXAMPLE_CONFIG, REPO

pytestmark = [pytest.mark.packaging, pytest.mark.long, pytest.mark.timeout(900)]

# Beside the package, what an operator needs from the sdist (MANIFEST.in declares them).
SDIST_FILES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "MANIFEST.in",
    "config/refreshd.example.toml",
    "deploy/docker/compose.yml",
    "deploy/docker/compose.vicidial.yml",
    "deploy/docker/refreshd.sidecar.toml",
    "deploy/grafana/refreshd.json",
    "deploy/prometheus/refreshd.rules.yml",
    "systemd/refreshd.service",
    "docs/ARCHITECTURE.md",
)
# Never copied into the build: the developer's venv, caches, earlier builds.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "*_cache", ".hypothesis", "build", "dist",
    "*.egg-info", "state", ".demo", "bench",
)  # fmt: skip
PASSWORD = "packaging-pass-1"


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    seconds: float


def package_files() -> set[str]:
    """The package's files as the sources have them: every module and py.typed."""
    package = REPO / "refreshd"
    found = {str(p.relative_to(REPO)) for p in package.rglob("*.py")}
    return found | {"refreshd/py.typed"}


def clean_environ() -> dict[str, str]:
    """This environment (pip's settings, PATH) without what would reach into the checkout
    or steer refreshd: PYTHONPATH, an active venv, REFRESHD_* overrides, credentials."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "CREDENTIALS_DIRECTORY"}
        and not key.startswith("REFRESHD_")
    }


def run(argv: list[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path) -> str:
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**clean_environ(), **(env or {})},
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build(root: Path) -> Dist:
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = root / "dist"
    started = time.monotonic()
    run([sys.executable, "-m", "build", "--outdir", out, source], cwd=root)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel, sdist, time.monotonic() - started)


def checked_config(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """The example config's passwords in a credentials directory, and `check`'s argv."""
    secrets = tmp_path / "credentials"
    secrets.mkdir(exist_ok=True)
    for name in ("east.password", "west.password"):
        (secrets / name).write_text(PASSWORD)
    return {"CREDENTIALS_DIRECTORY": str(secrets)}, ["check", "-c", str(EXAMPLE_CONFIG)]


def check_sdist(dist: Dist) -> None:
    """The sdist holds the package and what operators need."""
    with tarfile.open(dist.sdist) as sdist:
        top = f"refreshd-{refreshd.__version__}/"
        names = {m.name.removeprefix(top) for m in sdist.getmembers() if m.isfile()}
    assert dist.sdist.name == f"refreshd-{refreshd.__version__}.tar.gz"
    assert set(SDIST_FILES) <= names, set(SDIST_FILES) - names
    assert package_files() <= names, package_files() - names
    assert not [name for name in names if name.startswith(("tests/", ".venv/"))]


def check_wheel(dist: Dist) -> None:
    """The wheel holds the package, its license and the command."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"refreshd-{refreshd.__version__}.dist-info/"
        entry_points = wheel.read(info + "entry_points.txt").decode()
    assert dist.wheel.name == f"refreshd-{refreshd.__version__}-py3-none-any.whl"
    assert package_files() <= names, package_files() - names
    assert info + "licenses/LICENSE" in names
    assert "refreshd = refreshd.cli:main" in entry_points


def install_in_a_fresh_venv(dist: Dist, tmp_path: Path) -> Path:
    """The wheel, pip-installed into a new venv; its `refreshd` run from outside the repo."""
    fresh_venv = tmp_path / "venv"
    venv.create(fresh_venv, with_pip=True)
    started = time.monotonic()
    run([fresh_venv / "bin" / "python", "-m", "pip", "install", "-q", dist.wheel], cwd=tmp_path)
    took = time.monotonic() - started
    command = fresh_venv / "bin" / "refreshd"
    # From outside the repository: the installed package, not the sources, answers.
    where = run([fresh_venv / "bin" / "python", "-c", "import refreshd; print(refreshd.__file__)"],
                cwd=tmp_path)  # fmt: skip
    assert Path(where.strip()).is_relative_to(fresh_venv)

    assert run([command, "--version"], cwd=tmp_path).strip() == f"refreshd {refreshd.__version__}"
    env, check = checked_config(tmp_path)
    checked = run([command, *check], env=env, cwd=tmp_path)
    assert "valid: 3 server(s)" in checked
    assert PASSWORD not in checked
    assert "complete -F _refreshd refreshd" in run([command, "completion", "bash"], cwd=tmp_path)
    print(f"pip install of the wheel and its dependencies: {took:.1f} s")
    return fresh_venv


def install_with_pipx(dist: Dist, fresh_venv: Path, tmp_path: Path) -> None:
    """pipx (from the package index, into the fresh venv) installs the wheel; its command
    runs. pipx's home and bin directory are in tmp_path."""
    pip = [fresh_venv / "bin" / "python", "-m", "pip", "install", "-q", "pipx"]
    got = subprocess.run(
        [str(arg) for arg in pip],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_environ(),
        check=False,
    )
    if got.returncode != 0:
        why = f"pipx cannot be installed from the package index here: {got.stderr[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    home, bin_dir = tmp_path / "pipx-home", tmp_path / "pipx-bin"
    env = {"PIPX_HOME": str(home), "PIPX_BIN_DIR": str(bin_dir), "PIPX_MAN_DIR": str(tmp_path)}
    started = time.monotonic()
    run([fresh_venv / "bin" / "pipx", "install", dist.wheel], env=env, cwd=tmp_path)
    took = time.monotonic() - started

    command = bin_dir / "refreshd"
    assert command.resolve().is_relative_to(home.resolve())
    assert run([command, "--version"], cwd=tmp_path).strip() == f"refreshd {refreshd.__version__}"
    secrets, check = checked_config(tmp_path)
    assert "valid: 3 server(s)" in run([command, *check], env=secrets, cwd=tmp_path)
    print(f"pipx install of the wheel: {took:.1f} s")


def test_the_wheel_and_sdist_build_install_with_pip_and_pipx_and_run(tmp_path: Path) -> None:
    """One test, in order: under pytest-xdist separate tests would each build and install
    again on their own worker."""
    dist = build(tmp_path)
    print(f"python -m build: {dist.seconds:.1f} s")
    check_sdist(dist)
    check_wheel(dist)
    fresh_venv = install_in_a_fresh_venv(dist, tmp_path)
    install_with_pipx(dist, fresh_venv, tmp_path)  # last: it may skip
