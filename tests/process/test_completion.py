"""`refreshd completion bash`: the script the real command prints, loaded into a real bash,
offers every command and every option of the real parser, and the values it knows.

The parser is walked here on its own (argparse's actions), not through the generator's
walk, so a command or option the generator missed shows up as a difference."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refreshd.cli.main import build_parser
from refreshd.logs import LOG_FORMATS, LOG_LEVELS
from tests.support.daemon import clean_env

REFRESHD = Path(sys.executable).parent / "refreshd"  # the console script pip installed


@pytest.fixture(scope="module")
def bash() -> str:
    found = shutil.which("bash")
    if found is None:
        pytest.skip("bash is not installed")
    return found


def run_bash(bash: str, script: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [bash, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({"PATH": f"{REFRESHD.parent}:/usr/bin:/bin"}),
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def complete(bash: str, *lines: list[str], cwd: Path | None = None) -> list[set[str]]:
    """What `_refreshd` offers for each command line (its last word is being typed)."""
    script = ["source <(refreshd completion bash)"]
    for words in lines:
        script.append(f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})")
        script.append(f"COMP_CWORD={len(words) - 1}; _refreshd")
        script.append('echo "${COMPREPLY[*]}"')  # one line per command line
    out = run_bash(bash, "\n".join(script), cwd).splitlines()
    assert len(out) == len(lines)
    return [set(line.split()) for line in out]


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_script_loads_and_registers_the_completion(bash: str) -> None:
    out = run_bash(bash, "source <(refreshd completion bash); complete -p refreshd")
    assert out.strip() == "complete -F _refreshd refreshd"


def test_it_offers_every_command_and_every_option_of_the_real_parser(bash: str) -> None:
    parser = build_parser()
    by_name = commands(parser)
    assert {"run", "check", "refresh", "completion"} <= set(by_name)
    lines = [["refreshd", ""], ["refreshd", "-"]]
    lines += [["refreshd", name, "-"] for name in by_name]
    # An option before the command does not hide it; a partial word is completed.
    lines += [["refreshd", "--version", "st"]]

    offered = complete(bash, *lines)

    assert offered[0] == set(by_name)
    assert offered[1] == options(parser)
    for name, got in zip(by_name, offered[2 : 2 + len(by_name)], strict=True):
        assert got == options(by_name[name]), name
    assert offered[-1] == {"status"}


def test_it_completes_option_values_from_choices_and_files(bash: str, tmp_path: Path) -> None:
    (tmp_path / "refreshd.toml").write_text("")
    parser = build_parser()
    choices = [
        (name, action)
        for name, command in commands(parser).items()
        for action in command._actions
        if action.choices is not None and action.option_strings
    ]
    lines = [["refreshd", "completion", ""], ["refreshd", "check", "-c", "refr"]]
    lines += [["refreshd", name, action.option_strings[-1], ""] for name, action in choices]

    offered = complete(bash, *lines, cwd=tmp_path)

    assert offered[0] == {"bash"}
    assert offered[1] == {"refreshd.toml"}
    for (_, action), got in zip(choices, offered[2:], strict=True):
        assert got == {str(choice) for choice in action.choices or ()}


def test_an_unknown_shell_is_a_usage_error(bash: str) -> None:
    done = subprocess.run(
        [str(REFRESHD), "completion", "tcsh"],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "invalid choice: 'tcsh'" in done.stderr
    assert "Traceback" not in done.stderr


def test_log_format_and_log_level_complete_their_values(bash: str) -> None:
    offered = complete(
        bash,
        ["refreshd", "run", "--log-format", ""],
        ["refreshd", "run", "--log-level", ""],
        ["refreshd", "refresh", "--log-format", "j"],
        ["refreshd", "refresh", "--log-level", "w"],
    )
    assert offered == [set(LOG_FORMATS), set(LOG_LEVELS), {"json"}, {"warning"}]


def test_a_file_name_with_a_space_or_a_glob_character_is_one_completion(
    bash: str, tmp_path: Path
) -> None:
    for name in ("my conf.toml", "a*b.toml", "ab.toml"):
        (tmp_path / name).write_text("")
    script = (
        "source <(refreshd completion bash)\n"
        "COMP_WORDS=(refreshd check -c my); COMP_CWORD=3; _refreshd\n"
        "printf '<%s>\\n' \"${COMPREPLY[@]}\"\n"
        "COMP_WORDS=(refreshd check -c a); COMP_CWORD=3; _refreshd\n"
        "printf '<%s>\\n' \"${COMPREPLY[@]}\"\n"
    )
    lines = run_bash(bash, script, tmp_path).splitlines()
    assert lines[0] == "<my conf.toml>"
    assert sorted(lines[1:]) == ["<a*b.toml>", "<ab.toml>"]
