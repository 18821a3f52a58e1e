"""The benchmark in quick mode: long-poll against our server and the floor, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_longpoll_loses_nothing(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench", "--quick", "--transports", "longpoll",
            "--targets", "ours,floor", "--scenarios", "fanout-200,channels-200",
            "--drain", "10", "--scenario-timeout", "60", "--out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["target"], r["scenario"]) for r in rows} == {
        ("ours", "fanout-200"), ("floor", "fanout-200"),
        ("ours", "channels-200"), ("floor", "channels-200"),
    }
    for row in rows:
        assert "error" not in row, row
        assert row["connected"] == 200
        assert row["lost"] == row["duplicated"] == row["out_of_order"] == 0, row
        assert row["deliveries"] == row["expected_deliveries"] > 0
        for field in (
            "deliveries_per_second", "cpu_us_per_delivery", "latency_ms_p50", "latency_ms_p99",
            "memory_per_idle_connection_bytes", "loadgen_cpu_utilisation",
        ):
            assert row[field] is not None and row[field] > 0, (field, row)
    ratios = {r["scenario"]: r for r in report["ratios"]}
    assert ratios["fanout-200"]["ours_over_floor"] > 0
    assert "| ours" in done.stdout and "ours/floor" in done.stdout
