"""Render a results JSON as the Markdown of docs/benchmark.md's "Latest results".

``python -m bench.report bench/results/latest.json``; ``python -m bench.report --redis
bench/results/redis.json`` renders the Redis section's run (memory and Redis, one and two
server processes) instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.run import (
    goals_met,
    ratio_table,
    ratios,
    redis_ratio_table,
    redis_ratios,
    redis_table,
    table,
)


def markdown(report: dict) -> str:
    m = report["machine"]
    setup = report["setup"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.1f}" for x in m.get("load_average_at_end", []))
    lines = [
        f"Run on {report['date']} with `{report['command'].strip()}` at commit "
        f"`{m.get('git_commit', '?')}`"
        + (
            " (with uncommitted changes in pushserver/)"
            if m.get("pushserver_uncommitted_changes")
            else ""
        )
        + ".",
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


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--redis"]
    render = redis_markdown if "--redis" in sys.argv[1:] else markdown
    default = (
        "bench/results/redis.json" if "--redis" in sys.argv[1:] else "bench/results/latest.json"
    )
    path = Path(args[0] if args else default)
    print(render(json.loads(path.read_text())), end="")
