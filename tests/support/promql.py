"""The metric names and labels a PromQL expression uses, found by a small tokenizer, and
checked against what a real /metrics serves.

The tokenizer knows just enough PromQL for that (no parser, no promtool needed):

- string literals ("...", '...', `...`) are label values: skipped, never names;
- `[...]` is a range or a subquery's range (`[5m]`, `[$__rate_interval]`, `[1h:1m]`):
  skipped; a number or duration (`0.95`, `1h`, `3600`, `1e3`) is skipped too;
- `{...}` right after a name is that name's label matchers: `label op "value"` pairs, the
  labels kept; a `{...}` with no name before it (`{__name__=~"..."}`) is refused, as the
  checker could not know the metric;
- an identifier followed by `(`, or by `by` / `without`, is a function or an aggregation
  (`rate`, `sum`, `histogram_quantile`, Grafana's `label_values`), not a metric;
- the words of PromQL's grammar (`by`, `without`, `on`, `ignoring`, `group_left`,
  `group_right`, `bool`, `and`, `or`, `unless`, `offset`, `atan2`) are not metrics, and the
  identifiers in the parentheses after the label-list ones (`by (server, le)`) are labels;
- Grafana's variables (`$job`, `${server}`) only ever stand inside strings and ranges.

Every other identifier is a metric name. A label is "used" by a metric when it is in the
metric's matchers; labels in a `by (...)` / `on (...)` list must belong to some metric of the
same expression. `job` and `instance` are added by Prometheus at scrape time, not served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["TARGET_LABELS", "Use", "problems", "served", "uses"]

# Labels Prometheus attaches to every scraped series; `up` is its own series per target.
TARGET_LABELS = frozenset({"job", "instance"})
PROMETHEUS_SERIES = {"up": TARGET_LABELS}

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "atan2", "inf", "nan"}
)  # fmt: skip
_BY = frozenset({"by", "without"})
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|\d[\w.]*))
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open_brace>\{)
  | (?P<close_brace>\})
  | (?P<open>\()
  | (?P<close>\))
  | (?P<space>\s+)
  | (?P<other>=~|!~|!=|==|<=|>=|[-+*/%^<>=,$.])
    """,
    re.VERBOSE,
)


@dataclass
class Use:
    """What one expression uses: metric names with their matcher labels, grouping labels."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read {expr[at : at + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
        at = match.end()
    return found


def uses(expr: str) -> Use:
    """The metric names, their matcher labels and the grouping labels `expr` uses."""
    tokens = _tokens(expr)
    use = Use()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "open_brace":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "name":
            i += 1
            continue
        if text in _LABEL_LISTS and following[0] == "open":
            end = _closing(tokens, i + 1, "open", "close")
            use.grouping.update(t for k, t in tokens[i + 2 : end] if k == "name")
            i = end + 1
        elif text.lower() in _KEYWORDS or following[0] == "open" or following[1] in _BY:
            i += 1  # grammar, or a function / aggregation (`sum by (x) (...)`)
        else:
            labels = use.metrics.setdefault(text, set())
            i += 1
            if following[0] == "open_brace":
                end = _closing(tokens, i, "open_brace", "close_brace")
                labels.update(_matcher_labels(tokens[i + 1 : end], expr))
                i = end + 1
    return use


def _closing(tokens: list[tuple[str, str]], start: int, open_kind: str, close_kind: str) -> int:
    depth = 0
    for index in range(start, len(tokens)):
        kind = tokens[index][0]
        depth += (kind == open_kind) - (kind == close_kind)
        if depth == 0:
            return index
    raise ValueError(f"unbalanced {tokens[start][1]!r}")


def _matcher_labels(inside: list[tuple[str, str]], expr: str) -> set[str]:
    """`a="x", b=~"y"` -> {a, b}; each matcher is name, operator, string."""
    labels: set[str] = set()
    for k in range(0, len(inside), 4):
        matcher = inside[k : k + 3]
        kinds = [kind for kind, _ in matcher]
        if kinds != ["name", "other", "string"] or matcher[1][1] not in {"=", "!=", "=~", "!~"}:
            raise ValueError(f"cannot read the matchers {inside!r} in {expr!r}")
        labels.add(matcher[0][1])
    return labels


def served(families: Iterable[tuple[str, Mapping[str, str]]]) -> dict[str, set[str]]:
    """Sample name -> every label any of its samples carries, from (name, labels) pairs."""
    found: dict[str, set[str]] = {}
    for name, labels in families:
        found.setdefault(name, set()).update(labels)
    return found


def problems(expr: str, serving: Mapping[str, set[str]]) -> list[str]:
    """What in `expr` the served metrics do not have: unknown names, unknown labels."""
    use = uses(expr)
    known = {**PROMETHEUS_SERIES, **serving}
    found: list[str] = []
    for name, labels in sorted(use.metrics.items()):
        if name not in known:
            found.append(f"{name}: not served")
            continue
        for label in sorted(labels - known[name] - TARGET_LABELS):
            found.append(f"{name}: no label {label!r}")
    everywhere = TARGET_LABELS.union(*(known.get(name, set()) for name in use.metrics))
    for label in sorted(use.grouping - everywhere):
        found.append(f"grouping label {label!r}: on none of {sorted(use.metrics)}")
    return found
