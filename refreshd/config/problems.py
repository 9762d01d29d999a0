"""Problems found in a config (a place and a message), raised several at once from a validator."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def invalid_at(loc: Loc, message: str) -> ValidationError:
    """A ValidationError carrying one problem."""
    return invalid([(loc, message)])


def invalid(problems: Iterable[Problem], relay: ValidationError | None = None) -> ValidationError:
    """A ValidationError carrying our problems (and a caught error's, kept as they were).

    Raised from a validator, pydantic merges these into the outer error with the
    validator's location prepended, so one check can report several places.
    """
    line_errors: list[InitErrorDetails] = []
    if relay is not None:
        for detail in relay.errors(include_url=False):
            context = {**detail.get("ctx", {}), "message": detail["msg"]}
            line_errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(detail["type"], "{message}", context),
                    loc=detail["loc"],
                    input=None,
                )
            )
    for loc, message in problems:
        line_errors.append(
            InitErrorDetails(
                type=PydanticCustomError("refreshd", "{message}", {"message": message}),
                loc=loc,
                input=None,
            )
        )
    return ValidationError.from_exception_data("Config", line_errors, hide_input=True)
