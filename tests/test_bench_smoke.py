"""The benchmark in quick mode against our server and the floor: nothing lost, every field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pushserver.config import AVAILABLE_TRANSPORTS

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BENCH = (sys.executable, "-m", "bench", "--quick")
FIELDS = (
    "deliveries_per_second", "cpu_us_per_delivery", "latency_ms_p50", "latency_ms_p99",
    "memory_per_idle_connection_bytes", "loadgen_cpu_utilisation",
)  # fmt: skip


def run_bench(tmp_path: Path, transports: str, scenarios: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *PYTHON_BENCH,
            *("--transports", transports, "--targets", "ours,floor", "--scenarios", scenarios),
            *("--drain", "10", "--scenario-timeout", "60", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def check_rows(rows: list[dict]) -> None:
    for row in rows:
        assert "error" not in row, row
        assert row["connected"] == row["subscribers"] == 200
        assert row["lost"] == row["duplicated"] == row["out_of_order"] == 0, row
        assert row["deliveries"] == row["expected_deliveries"] > 0
        for field in FIELDS:
            assert row[field] is not None and row[field] > 0, (field, row)


def test_quick_bench_longpoll_loses_nothing(tmp_path):
    report, stdout = run_bench(tmp_path, "longpoll", "fanout-200,channels-200")
    rows = report["results"]
    assert {(r["target"], r["scenario"]) for r in rows} == {
        ("ours", "fanout-200"), ("floor", "fanout-200"),
        ("ours", "channels-200"), ("floor", "channels-200"),
    }  # fmt: skip
    check_rows(rows)
    ratios = {r["scenario"]: r for r in report["ratios"]}
    assert ratios["fanout-200"]["ours_over_floor"] > 0
    assert "| ours" in stdout and "ours/floor" in stdout


@pytest.mark.skipif(
    not {"eventsource", "websocket"} <= set(AVAILABLE_TRANSPORTS),
    reason="SSE and WebSocket are not both implemented",
)
def test_quick_bench_streams_lose_nothing(tmp_path):
    report, _ = run_bench(tmp_path, "sse,ws", "fanout-200")
    rows = report["results"]
    assert {(r["target"], r["transport"]) for r in rows} == {
        ("ours", "sse"), ("floor", "sse"), ("ours", "ws"), ("floor", "ws"),
    }  # fmt: skip
    check_rows(rows)
