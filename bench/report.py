"""Render a results JSON as the Markdown of docs/benchmark.md's "Latest results".

``python -m bench.report bench/results/latest.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.run import goals_met, ratio_table, ratios, table


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


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    print(markdown(json.loads(path.read_text())), end="")
