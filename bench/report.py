"""Write the measured part of docs/PERFORMANCE.md from bench/results/*.json.

Only the block between the two markers is replaced; the analysis around it (profiles
of the misses, proposed changes) is written by hand and kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from common import RESULTS, ROOT, machine

DOC = ROOT / "docs" / "PERFORMANCE.md"
BEGIN = "<!-- bench:begin: written by `make bench` (bench/report.py); edits here are lost -->"
END = "<!-- bench:end -->"
ORDER = ("dispatch", "accuracy", "idle", "scale", "soak", "simulator")


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ok(met: bool) -> str:
    return "met" if met else "**missed**"


def _provenance(r: dict[str, Any]) -> str:
    load = r.get("load_average", {})
    source = f"; refreshd from {r.get('refreshd_from', 'the working tree')}"
    return (
        f"_Measured {r.get('measured', '?')}; load average {load.get('start', '?')} at the start,"
        f" {load.get('end', '?')} at the end{source}._"
    )


def dispatch(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### 1. Dispatch: {r['servers']} servers due at once, simulator +"
        f"{r['latency_s'] * 1000:.0f} ms per call",
        "",
        "| contender | due -> last answer | floor | first call after due | CPU | peak in "
        "flight | x the time of xargs -P 16 | x faster than serial curl |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in r["results"].items():
        lines.append(
            f"| {name} | {x['wall_s']:.2f} s | {x['floor_s']:.2f} s |"
            f" {x['first_call_lag_ms']:.0f} ms | {x['cpu_s']:.1f} s | {x['peak_in_flight']} |"
            f" {x['vs_xargs16']:.2f} | {x['speedup_vs_serial']:.1f} |"
        )
    lines += [
        "",
        f"Floor: servers x latency / calls in flight at most; refreshd keeps at most"
        f" {r['max_logins_in_flight']} calls in flight per API user (policy.MAX_LOGINS_IN_FLIGHT)."
        " CPU: the daemon's, or all curl processes'.",
    ]
    return [*lines, "", _provenance(r)]


def accuracy(r: dict[str, Any]) -> list[str]:
    d, c = r["refreshd"], r["curl_process"]
    places = ", ".join(f"{x:.1f}" for x in d["by_place_p50_ms"])
    return [
        f"### 2. Firing accuracy: {r['servers']} servers, {r['group']} due at each instant",
        "",
        "| | p50 | p99 | max | n |",
        "|---|---:|---:|---:|---:|",
        f"| refreshd: slot start -> call at the simulator | {d['p50_ms']:.1f} ms |"
        f" {d['p99_ms']:.1f} ms | {d['max_ms']:.1f} ms | {d['count']} |",
        f"| a curl process started at the instant | {c['p50_ms']:.1f} ms | {c['p99_ms']:.1f} ms |"
        f" {c['max_ms']:.1f} ms | {c['count']} |",
        "",
        _rounds(r),
        "",
        f"Target p99 <= {r['target_p99_ms']:.0f} ms: {_ok(r['met'])} (ratio p99 refreshd / curl"
        f" {r['ratio_p99']:.2f}). Slot start -> call handed to the HTTP client: p50"
        f" {d['to_client_p50_ms']:.1f} ms, p99 {d['to_client_p99_ms']:.1f} ms. Median lag of the"
        f" 1st..{r['group']}th call due at the same instant: {places} ms.",
        "",
        _provenance(r),
    ]


def _rounds(r: dict[str, Any]) -> str:
    rounds = r.get("rounds") or []
    if not rounds:
        return "One round."
    each = "; ".join(
        f"p50 {x['p50_ms']:.1f}, p99 {x['p99_ms']:.1f}, max {x['max_ms']:.1f} ms" for x in rounds
    )
    return (
        f"{len(rounds)} rounds, each a new daemon ({each}); the table shows the median round"
        " by p99."
    )


def idle(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### 3. Idle cost: nothing due for {r['idle_s']:.0f} s",
        "",
        "| servers | CPU | share of a core | wake-ups/s | RSS | peak RSS | threads | fds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("10000", "1"):
        x = r["results"][key]
        lines.append(
            f"| {int(key):,} | {x['cpu_s']:.2f} s | {x['cpu_share']:.3%} |"
            f" {x['wakeups_per_s']:.1f} | {x['rss_mb']:.1f} MB | {x['peak_rss_mb']:.1f} MB |"
            f" {x['threads']} | {x['fds']} |"
        )
    lines += [
        "",
        f"Targets: CPU under 0.5 % of a core {_ok(r['cpu_met'])}; RSS under 100 MB"
        f" {_ok(r['rss_met'])}. RSS 10,000 / 1 server: {r['rss_ratio']:.2f}x"
        f" ({r['per_server_kb']:.1f} kB per server).",
        "",
        _provenance(r),
    ]
    return lines


def scale(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### 4. Scale: {r['servers']:,} servers (median of {r['runs']})",
        "",
        "| command | 10,000 servers | its CPU | 1 server | target < 3 s |",
        "|---|---:|---:|---:|---|",
        f"| `refreshd --version` (interpreter + imports) | {r['version_s']:.2f} s | | | |",
    ]
    for label, f in r["figures"].items():
        lines.append(
            f"| {label} | {f['10000']:.2f} s | {f['cpu']:.2f} s | {f['1']:.2f} s |"
            f" {_ok(f['met'])} |"
        )
    lines += ["", f"Config file: {r['config_bytes'] / 1e6:.1f} MB. Where the time goes (py-spy):"]
    for title, p in r["profiles"].items():
        wall = r["figures"].get(title, r["figures"].get("READY=1 (first start)"))["10000"]
        phases = "; ".join(
            f"{label} {share:.0%} (~{share * wall:.2f} s)"
            for label, share in p["phases"]
            if share >= 0.03
        )
        lines.append(f"- `{title}`: {phases}.")
    return [*lines, "", _provenance(r)]


def soak(r: dict[str, Any]) -> list[str]:
    long = r["long_slots"]
    lines = [
        f"### 5. Soak: {r['refreshes']:,} refreshes through one daemon",
        "",
        "| | |",
        "|---|---|",
        f"| refreshes, time, rate | {r['refreshes']:,} in {r['elapsed_s']:.0f} s ="
        f" {r['rate_per_s']:.0f}/s ({r['failed_or_retried']} failed or retried) |",
        f"| daemon CPU | {r['cpu_s']:.1f} s = {r['cpu_ms_per_refresh']:.2f} ms per refresh |",
        f"| RSS after warm-up ({r['warm_refreshes']:,.0f}) -> end (max) | {r['rss_warm_mb']:.1f}"
        f" -> {r['rss_final_mb']:.1f} MB ({r['rss_max_mb']:.1f}); growth {r['growth']:+.1%},"
        f" trend {r['trend_kb_per_1000']:+.1f} kB per 1,000 refreshes |",
        f"| open fds after warm-up: first, min, max; half-way, end | {r['fds_first']},"
        f" {r['fds_min']}, {r['fds_max']}; {r['fds_half']}, {r['fds_final']} |",
        f"| open fds at the end, by kind | {_kinds(r['fd_kinds'])} |",
        f"| same fleet, one-hour windows (3,600 runs per slot) | {long['rate_per_s']:.0f}/s,"
        f" {long['cpu_ms_per_refresh']:.2f} ms CPU per refresh"
        f" ({r['long_slots_cpu_ratio']:.1f}x) |",
        "",
        f"Targets: RSS growth under 10 % {_ok(r['growth_met'])}; fds flat {_ok(r['fds_met'])}:"
        f" open files {r['files_open']} throughout, sockets at most {r['sockets_max']} (the"
        f" connection pool, max_concurrency {r['sockets_bound'] - 1}, plus the metrics listener).",
    ]
    if r["refreshes"] < r["target"]:
        lines.append(
            f"Only {r['refreshes']:,} of {r['target']:,} refreshes fitted in the time limit; at"
            f" the measured trend RSS would grow {r['extrapolated_growth']:+.1%}"
            f" by {r['target']:,}."
        )
    return [*lines, "", _provenance(r)]


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def simulator(r: dict[str, Any]) -> list[str]:
    lines = [
        "### 6. The simulator's own throughput (curl --parallel, keep-alive)",
        "",
        "| load | calls/s | simulator CPU | peak in flight |",
        "|---|---:|---:|---:|",
    ]
    for name, x in r["results"].items():
        lines.append(
            f"| {name} | {x['per_s']:.0f} | {x['cpu_share']:.0%} of a core |"
            f" {x['peak_in_flight']:.0f} |"
        )
    lines += ["", "What the benchmarks asked of it:", ""]
    for name, d in r["demands"].items():
        lines.append(
            f"- {name}: {d['rate_per_s']:.0f} calls/s, {d['share']:.0%} of what it serves"
            f" ({d['compared_with']})"
        )
    return [*lines, "", _provenance(r)]


def block(runtime: str | None) -> str:
    m = machine()
    lines = [
        BEGIN,
        "",
        "## Measured",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']},"
        f" Python {m['python']}, curl {_curl_version()}. Written {m['date']}"
        + (f"; `make bench` took {runtime}." if runtime else "."),
        "",
    ]
    for name in ORDER:
        result = _load(name)
        if result is None:
            lines += [f"### {name}: not run", ""]
            continue
        lines += [*globals()[name](result), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _curl_version() -> str:
    try:
        out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "missing"
    return out.stdout.split()[1]


_SKELETON = """# Performance

What refreshd costs and how fast it is, against what operators would otherwise use
(cron + curl), measured in one run on one machine by `make bench` (scripts in `bench/`,
never run by the tests). The block below is rewritten by every `make bench`.

{block}
"""


def main() -> int:
    runtime = sys.argv[1] if len(sys.argv) > 1 else None
    generated = block(runtime)
    if DOC.exists():
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            DOC.write_text(head + generated.rstrip("\n") + tail)
        else:
            DOC.write_text(text.rstrip("\n") + "\n\n" + generated)
    else:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(_SKELETON.format(block=generated.rstrip("\n")))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
