"""Render a results JSON as the Markdown of docs/benchmark.md's "Latest results".

``python -m bench.report bench/results/latest.json``; ``python -m bench.report --redis
bench/results/redis.json`` renders the Redis section's run (memory and Redis, one and two
server processes) instead, ``python -m bench.report --soak bench/results/soak.json`` the
soak's memory over time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.run import (
    fmt,
    goals_met,
    ratio_table,
    ratios,
    redis_ratio_table,
    redis_ratios,
    redis_table,
    render,
    soak_series,
    soak_summary,
    table,
)


def provenance(report: dict) -> str:
    """When, with which command and at which commit a run was made."""
    m = report["machine"]
    dirty = (
        " (with uncommitted changes in pushserver/)"
        if m.get("pushserver_uncommitted_changes")
        else ""
    )
    return (
        f"{report['date']} with `{report['command'].strip()}` at commit "
        f"`{m.get('git_commit', '?')}`{dirty}"
    )


def markdown(report: dict) -> str:
    m = report["machine"]
    setup = report["setup"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.1f}" for x in m.get("load_average_at_end", []))
    lines = [
        f"Run on {provenance(report)}.",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, **shared with other "
        f"engineers' test runs** (load average {load} at the start, {load_end} at the end): "
        "wall-clock figures (deliveries/s, latency, connect time) are noisy; CPU per delivery "
        "and memory much less so.",
        f"- Server on CPU {setup['server_cpu']}, load generator on CPU {setup['loadgen_cpu']}; "
        f"Python {m['python']}, hypercorn {m['hypercorn']}, "
        f"{setup['loop']} {m.get('uvloop') or ''}, "
        f"anyio {m['anyio']}; nchan: {m.get('nchan') or 'not installed'}.",
        f"- {setup['message_size_bytes']}-byte messages; file-descriptor limit "
        f"{setup['fd_limit'][0]:,} (hard {setup['fd_limit'][1]:,}).",
        "",
        table(report["results"]),
        "",
        "CPU per delivery, ours against the references (lower is better for the server; the",
        "ratio is ours divided by theirs):",
        "",
        ratio_table(report["ratios"]),
        "",
        "The issue's targets, as measured in this run:",
        "",
    ]
    for goal in goals_met(report["results"], ratios(report["results"])):
        lines.append(
            f"- {'met' if goal['met'] else '**missed**'}: {goal['target']} — {goal['measured']}"
        )
    for key, note in report.get("notes", {}).items():
        lines.append(f"- note ({key}): {note}")
    return "\n".join(lines) + "\n"


def redis_markdown(report: dict) -> str:
    m = report["machine"]
    setup = report["setup"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.1f}" for x in m.get("load_average_at_end", []))
    placement = []
    for target, (servers, redis_cpu, loadgen_cpu) in setup.get("redis_placement", {}).items():
        placement.append(
            f"{target}: server process{'es' if len(servers) > 1 else ''} on CPU "
            f"{' and '.join(servers)}, Redis on {f'CPU {redis_cpu}' if redis_cpu else 'either CPU'}"
            f", load generator on {f'CPU {loadgen_cpu}' if loadgen_cpu else 'either CPU'}"
        )
    lines = [
        f"Run finished on {report['date']} with `{report['command'].strip()}` at commit "
        f"`{m.get('git_commit', '?')}`"
        + (
            " (with uncommitted changes in pushserver/)"
            if m.get("pushserver_uncommitted_changes")
            else ""
        )
        + ".",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, shared with other "
        f"engineers' test runs (load average {load} at the start, {load_end} at the end).",
        f"- Redis {m.get('redis') or '?'} (a private `redis-server` per row, no persistence); "
        f"Python {m['python']}, hypercorn {m['hypercorn']}, {setup['loop']}; "
        f"{setup['message_size_bytes']}-byte messages.",
        f"- Placement: memory x1 (`ours`) as in the main run (server on CPU "
        f"{setup['server_cpu']}, load generator on CPU {setup['loadgen_cpu']}); "
        + "; ".join(placement)
        + ".",
        "- Redis commands per publish and per delivery: Redis's own count (`INFO "
        "commandstats`, reset before the phase) of what the servers sent it, a script once "
        "(the commands it runs inside left out); per publish from 50 publishes to a channel "
        "nobody subscribes to, per delivery the measured phase's rest.",
        "",
        redis_table(report["results"]),
        "",
        "CPU per delivery (server processes summed; Redis's own in brackets) and the ratios:",
        "",
        redis_ratio_table(redis_ratios(report["results"])),
    ]
    for key, note in report.get("notes", {}).items():
        lines.append(f"- note ({key}): {note}")
    return "\n".join(lines) + "\n"


def soak_markdown(report: dict) -> str:
    m = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.1f}" for x in m.get("load_average_at_end", []))
    lines = [
        f"Run finished on {provenance(report)}; {m['cpus']} CPUs ({m['cpu']}), shared with "
        "other engineers' test runs (load "
        f"average {load} at the start, {load_end} at the end); Python {m['python']}, "
        f"hypercorn {m['hypercorn']}, {report['setup']['loop']}.",
    ]
    for row in report.get("soak", []):
        if "samples" not in row:
            lines += ["", f"- {row['target']}: error: {row.get('error')}"]
            continue
        scale, unit = (60, "minute") if row["duration"] >= 300 else (1, "second")
        head = [unit, "RSS MiB (median)", "RSS min-max MiB", "fds (max)", "connections",
                "subscribers", "short-lived channels (max)", "server CPU", "deliveries/s",
                "closes"]  # fmt: skip
        cells = [head]
        for e in soak_series(row):
            cells.append([
                f"{e['from_s'] / scale:g}-{e['to_s'] / scale:g}",
                f"{e['rss_median_kib'] / 1024:.1f}",
                f"{e['rss_min_kib'] / 1024:.1f}-{e['rss_max_kib'] / 1024:.1f}",
                f"{e['fds_max']:,}", f"{e['connections_median']:,}",
                f"{e['subscribers_median']:,}", f"{e['ephemeral_channels_max']:,}",
                f"{e['server_cpu'] * 100:.0f}%" if e["server_cpu"] is not None else "-",
                fmt(e["deliveries_per_second"]), f"{e['reconnects']:,}",
            ])  # fmt: skip
        lines += [
            "",
            f"Target `{row['target']}`: {row['subscribers']:,} subscribers ("
            + ", ".join(f"{v:,} {k}" for k, v in row["transports"].items())
            + f") on {row['channels']} channels, {row['duration'] / scale:g} {unit}s; "
            f"RSS {row['rss_fresh_kib'] / 1024:.1f} MiB before connecting"
            + (
                f"; **the server ran `gc.collect()` every {row['server_gc_every']:g} s**"
                if row.get("server_gc_every")
                else ""
            )
            + ".",
            "",
            render(cells),
            "",
        ]
        lines += [f"- {line}" for line in soak_summary(row).splitlines()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    flags = {"--redis", "--soak"}
    args = [a for a in sys.argv[1:] if a not in flags]
    if "--soak" in sys.argv[1:]:
        render_report, default = soak_markdown, "bench/results/soak.json"
    elif "--redis" in sys.argv[1:]:
        render_report, default = redis_markdown, "bench/results/redis.json"
    else:
        render_report, default = markdown, "bench/results/latest.json"
    path = Path(args[0] if args else default)
    print(render_report(json.loads(path.read_text())), end="")
