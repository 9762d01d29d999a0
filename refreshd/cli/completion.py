"""Bash completion, generated from the argparse parser itself: the commands and options are
written once (cli/main.py), so a new option completes without anyone editing a script.

What completes: the commands; each command's options (and the top level's); an option's
value from its `choices`, or file names for a Path-typed option. Positional arguments
(server names) do not: they live in the config, which completion does not read.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHELLS", "Completions", "bash_script", "completions"]

SHELLS = ("bash",)

# A bash function name and a command word: letters, digits, `-` and `_` (the script quotes
# nothing else, so anything outside that would be a bug in the parser's names).
_WORD = re.compile(r"^-{0,2}[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Completions:
    """What one parser (the top level, or one command) offers."""

    options: tuple[str, ...]  # every option string: -c, --config, --json, -h, --help
    values: dict[str, tuple[str, ...] | None]  # option -> its choices; None: file names
    takes_value: tuple[str, ...]  # options followed by a value (choices, files or free text)
    words: tuple[str, ...] = ()  # the choices of its positional arguments (completion's shell)


def completions(parser: argparse.ArgumentParser) -> tuple[Completions, dict[str, Completions]]:
    """The top level's completions and each command's, by command name."""
    commands: dict[str, Completions] = {}
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = _of(sub)
    return _of(parser), commands


def _of(parser: argparse.ArgumentParser) -> Completions:
    options: list[str] = []
    values: dict[str, tuple[str, ...] | None] = {}
    takes_value: list[str] = []
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings:
            if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
                words.extend(str(choice) for choice in action.choices)
            continue
        options.extend(action.option_strings)
        if action.nargs == 0:  # flags: store_true, --help, --version
            continue
        takes_value.extend(action.option_strings)
        # Choices checked by the option's type (cli/arguments.OneOf: any case, or from the
        # environment) are offered as argparse's own are.
        choices = (
            action.choices if action.choices is not None else getattr(action.type, "choices", None)
        )
        for option in action.option_strings:
            if choices is not None:
                values[option] = tuple(str(choice) for choice in choices)
            elif action.type is Path:
                values[option] = None
    return Completions(tuple(options), values, tuple(takes_value), tuple(words))


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash script defining `_refreshd` and `complete -F _refreshd refreshd`."""
    top, commands = completions(parser)
    words = [*top.options, *commands]
    for each in commands.values():
        words.extend([*each.options, *each.words])
        words.extend(v for choices in each.values.values() if choices for v in choices)
    bad = [word for word in words if not _WORD.match(word)]
    assert not bad, f"names the completion script cannot carry: {bad}"
    prog = parser.prog
    branches = "".join(_branch(name, each) for name, each in sorted(commands.items()))
    return _TEMPLATE.format(
        prog=prog,
        function="_" + prog.replace("-", "_"),
        commands=" ".join(sorted(commands)),
        top_options=" ".join(top.options),
        # An option of the top level that takes a value: its value is not the command.
        skip_value=(
            f"            {'|'.join(top.takes_value)}) (( i++ )) ;;\n" if top.takes_value else ""
        ),
        top_value_case=_value_case(top),
        branches=branches,
    )


def _value_case(each: Completions) -> str:
    """A `case "$prev"` body: complete an option's value, or offer nothing for free text."""
    replies: dict[str, list[str]] = {}  # reply -> the options that get it
    for option in each.takes_value:
        choices = each.values.get(option, ())
        if choices is None:
            # One name a line, read as it is: a name with a space stays one completion,
            # and one with `*` is never expanded as a pattern.
            reply = (
                'mapfile -t COMPREPLY < <(compgen -f -- "$cur"); compopt -o filenames 2>/dev/null'
            )
        elif choices:
            reply = f'COMPREPLY=($(compgen -W {shlex.quote(" ".join(choices))} -- "$cur"))'
        else:  # free text (a name, an instant, a number): nothing to offer
            reply = ":"
        replies.setdefault(reply, []).append(option)
    return "".join(
        f"            {'|'.join(options)}) {reply}; return 0 ;;\n"
        for reply, options in replies.items()
    )


def _branch(name: str, each: Completions) -> str:
    """A command's case: an option's value, else its options (and its positional words)."""
    options = " ".join(each.options)
    offer = f'COMPREPLY=($(compgen -W "{options}" -- "$cur"))'
    if each.words:
        offer = (
            f'if [[ "$cur" == -* ]]; then {offer}; '
            f'else COMPREPLY=($(compgen -W "{" ".join(each.words)}" -- "$cur")); fi'
        )
    return (
        f"        {name})\n"
        f'            case "$prev" in\n{_value_case(each)}            esac\n'
        f"            {offer} ;;\n"
    )


_TEMPLATE = """\
# bash completion for {prog}, generated from its argument parser: `{prog} completion bash`.
# Load it now:  source <({prog} completion bash)
# For good:     {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}
{function}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" command="" i
    if (( COMP_CWORD > 0 )); then prev="${{COMP_WORDS[COMP_CWORD-1]}}"; fi
    COMPREPLY=()
    # The command is the first word that is neither an option nor an option's value.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "${{COMP_WORDS[i]}}" in
{skip_value}            -*) ;;
            *) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$command" in
        "")
            case "$prev" in
{top_value_case}            esac
            if [[ "$cur" == -* ]]; then
                COMPREPLY=($(compgen -W "{top_options}" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "{commands}" -- "$cur"))
            fi ;;
{branches}    esac
    return 0
}}
complete -F {function} {prog}
"""
