"""Run the benchmark: ``python -m bench`` (or ``nox -s bench``); ``--quick`` for a smoke run.

For every target (ours, the floor, nchan when installed), transport and scenario it starts a
fresh server pinned to CPU 0 and a load generator pinned to CPU 1, prints a table and writes
JSON (default ``bench/results/latest.json``).

``--targets ours,floor,ours-uvicorn,floor-uvicorn`` adds ours and the floor under uvicorn
(when it is installed) to compare the two ASGI servers.

The Redis targets (``--targets ours,redis-1,redis-2``) run ours on a redis store, with a
fresh private ``redis-server`` per row: ``redis-1`` is one server process (CPU 0; Redis and
the load generator on CPU 1), ``redis-2`` two server processes on two ports sharing that
Redis (CPU 0 and CPU 1; Redis and the load generator left to the scheduler), subscribers
split evenly between them and publishes taking turns; ``redis-4`` four. ``cluster-2`` and
``cluster-4`` run two and four on a Redis Cluster of three primaries (no replicas), whose
CPU is summed as "Redis".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import nchan, redisserver, uvicornserve  # noqa: E402
from bench.common import cpu_model, raise_fd_limit  # noqa: E402
from pushserver.testing import free_port  # noqa: E402

TRANSPORTS = ("longpoll", "sse", "ws")
#: Our config's name for each bench transport.
CONFIG_NAMES = {"longpoll": "longpoll", "sse": "eventsource", "ws": "websocket"}
TARGETS = ("ours", "floor", "nchan")
#: Ours and the floor under uvicorn instead of hypercorn (by name only; needs uvicorn and
#: httptools, which pushserver does not depend on): see bench/uvicornserve.py.
UVICORN_TARGETS = {"ours-uvicorn": "server.py", "floor-uvicorn": "floor.py"}
#: Ours on a redis store: one server process, or two (four) sharing one Redis; and two
#: (four) on a Redis Cluster of three primaries (no replicas: the sharding is measured).
REDIS_TARGETS = {"redis-1": 1, "redis-2": 2, "redis-4": 4, "cluster-2": 2, "cluster-4": 4}
CLUSTER_TARGETS = ("cluster-2", "cluster-4")
#: The soak drives one server process, memory or Redis store.
SOAK_TARGETS = ("ours", "redis-1")
SERVER_CPU, LOADGEN_CPU = "0", "1"
#: Where each process of a target runs: servers, Redis, load generator (None: anywhere).
#: With two servers both cores hold one; Redis and the load generator then share both.
PLACEMENT: dict[str, tuple[list[str], str | None, str | None]] = {
    "redis-1": ([SERVER_CPU], LOADGEN_CPU, LOADGEN_CPU),
    "redis-2": ([SERVER_CPU, LOADGEN_CPU], None, None),
    "redis-4": ([SERVER_CPU, LOADGEN_CPU] * 2, None, None),
    "cluster-2": ([SERVER_CPU, LOADGEN_CPU], None, None),
    "cluster-4": ([SERVER_CPU, LOADGEN_CPU] * 2, None, None),
}


def pinned(cpu: str | None) -> list[str]:
    """``taskset -c cpu`` when there are two CPUs to keep apart; nothing otherwise."""
    if cpu is not None and shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", cpu]
    return []


def scenario(name: str, n: int, channels: int, mode: str, duration: float, **extra) -> dict:
    return {"name": name, "subscribers": n, "channels": channels, "mode": mode,
            "duration": duration, **extra}  # fmt: skip


def scenarios(quick: bool) -> list[dict]:
    """Fan-out on one channel, one subscriber per channel, and the two latency readings.

    ``latency-<n>ch``: n subscribers, each on its own channel, 50 publishes/s spread over
    the channels (latency with n connections held). ``latency-<n>x1ch``: n subscribers on
    one channel, 50 publishes/s, each reaching all n (50 x n deliveries/s offered; run for
    one second, since a server that cannot keep up only builds a backlog after that).
    ``channels-10000`` (10,000 publishes per round) and ``fanout-2000`` are available by
    name, not run by default.
    """
    if quick:
        n_small, n_big, duration, latency_n = 200, None, 1.0, 200
    else:
        n_small, n_big, duration, latency_n = 1000, 10000, 4.0, 2000
    found = [scenario(f"fanout-{n_small}", n_small, 1, "throughput", duration)]
    if n_big:
        found.append(scenario(f"fanout-{n_big}", n_big, 1, "throughput", duration))
    found.append(scenario(f"channels-{n_small}", n_small, n_small, "throughput", duration))
    found.append(
        scenario(f"latency-{latency_n}ch", latency_n, latency_n, "rate", duration, rate=50)
    )
    found.append(scenario(f"latency-{latency_n}x1ch", latency_n, 1, "rate", 1.0, rate=50, drain=60))
    if n_big:
        found.append(
            scenario(f"channels-{n_big}", n_big, n_big, "throughput", duration, optional=True)
        )
        # Fan-out at 2,000 subscribers, by name: with fanout-10000, whether the cost per
        # delivery grows with the number of subscribers (issue 15, item 6).
        found.append(scenario("fanout-2000", 2000, 1, "throughput", duration, optional=True))
    found.append(soak_scenario(quick))
    return found


def soak_scenario(quick: bool, duration: float | None = None) -> dict:
    """``soak``, by name only: churn and publishing for ``duration`` s, memory sampled.

    Every transport in one run (a third of the subscribers each). See bench/soak.py and
    docs/benchmark.md's "Soak". ``--quick`` shrinks it to a few seconds' smoke run.
    """
    if quick:
        load = {"subscribers": 150, "channels": 15, "rate": 30.0, "churn": 10.0,
                "ephemeral": 4.0, "lifetime": (0.5, 1.5), "sample_interval": 0.5,
                "flood": 20.0}  # fmt: skip
        default = 6.0
    else:
        # Sized to need a fraction of a core: on a shared machine the server must keep up
        # with a share of CPU 0, or the soak measures its backlog, not its memory.
        # The flood: anonymous channel-creating long polls, hung up at once; the store's
        # channel_timeout (60 s) removes their channels, so memory is flat after a minute.
        load = {"subscribers": 1200, "channels": 40, "rate": 40.0, "churn": 10.0,
                "ephemeral": 2.0, "lifetime": (5.0, 20.0), "sample_interval": 5.0,
                "flood": 20.0}  # fmt: skip
        default = 600.0
    n, channels = load.pop("subscribers"), load.pop("channels")
    return scenario("soak", n, channels, "soak", duration or default, optional=True,
                    buffer=100, **load)  # fmt: skip


def read_port(process: subprocess.Popen, timeout: float) -> int:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        if selector.select(deadline - time.monotonic()):
            line = process.stdout.readline()
            if line.startswith(b"LISTENING "):
                return int(line.split()[1])
            if not line:
                break
    raise RuntimeError(f"server did not start: {line!r}")


class PythonServer:
    """bench/server.py (ours) or bench/floor.py under hypercorn, pinned to ``cpu``."""

    def __init__(
        self,
        script: str,
        loop: str,
        cpu: str = SERVER_CPU,
        extra: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
        start: float = 30,
    ) -> None:
        """``wrapper`` runs the interpreter (bench/instructions.py: valgrind), ``start`` is
        how long it may take to listen."""
        self.process = subprocess.Popen(
            [
                *pinned(cpu),
                *wrapper,
                sys.executable,
                str(ROOT / "bench" / script),
                "--loop",
                loop,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            self.port = read_port(self.process, start)
        except BaseException:
            self.stop()
            raise
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


class NchanServer:
    def __init__(self, port: int, nofile: int) -> None:
        self.nginx = nchan.Nchan(port, int(SERVER_CPU), nofile, pinned(SERVER_CPU)).start()
        self.port = port
        self.pid = self.nginx.worker_pid

    def stop(self) -> None:
        self.nginx.stop()


def run_one(target: str, transport: str, scenario: dict, args, nofile: int, seq: int) -> dict:
    row = {
        "target": target,
        "transport": transport,
        "scenario": scenario["name"],
        "subscribers": scenario["subscribers"],
        "channels": scenario["channels"],
        "mode": scenario["mode"],
    }
    if scenario["mode"] == "rate":
        row["rate"] = scenario["rate"]
    servers: list = []
    redis = None
    loadgen_cpu: str | None = LOADGEN_CPU
    soak = scenario["mode"] == "soak"
    # The soak keeps a short buffer, which fills during its warm-up.
    buffer = ("--max-messages", str(scenario["buffer"])) if soak else ()
    if soak and args.gc_every:
        buffer += ("--gc-every", str(args.gc_every))
        row["server_gc_every"] = args.gc_every
    try:
        if target == "nchan":
            servers.append(NchanServer(free_port(), nofile))
        elif target in REDIS_TARGETS:
            server_cpus, redis_cpu, loadgen_cpu = PLACEMENT[target]
            if target in CLUSTER_TARGETS:
                redis = redisserver.RedisClusterServers(replicas=0).start()
            else:
                redis = redisserver.RedisServer(prefix=pinned(redis_cpu)).start()
            row["placement"] = {
                "servers": server_cpus,
                "redis": redis_cpu or "any",
                "loadgen": loadgen_cpu or "any",
            }
            store = ("--redis-url", redis.url, "--key-prefix", f"b{os.getpid()}x{seq}:", *buffer)
            if target in CLUSTER_TARGETS:
                store += ("--redis-cluster",)
            for k in range(REDIS_TARGETS[target]):
                servers.append(PythonServer("server.py", args.loop, server_cpus[k], store))
        elif target in UVICORN_TARGETS:
            extra = ("--asgi-server", "uvicorn", *buffer)
            servers.append(PythonServer(UVICORN_TARGETS[target], args.loop, extra=extra))
        else:
            script = "server.py" if target == "ours" else "floor.py"
            servers.append(PythonServer(script, args.loop, extra=buffer))
        spec = {
            "host": "127.0.0.1",
            "ports": [server.port for server in servers],
            "server_pids": [server.pid for server in servers],
            # The soak reads one Redis's memory; the load generator sums every Redis's CPU.
            "redis_pid": getattr(redis, "pid", None),
            "redis_pids": [s.pid for s in getattr(redis, "servers", [redis])] if redis else [],
            # Where the load generator reads Redis's command statistics (every node's).
            "redis_urls": [s.url for s in getattr(redis, "servers", [redis])] if redis else [],
            "transport": transport,
            "prefix": f"b{os.getpid()}x{seq}",
            "subscribers": scenario["subscribers"],
            "channels": scenario["channels"],
            "mode": scenario["mode"],
            "rate": scenario.get("rate"),
            "duration": scenario["duration"],
            "drain": max(args.drain, scenario.get("drain", 0)),
            "window": args.window,
            "publishers": 32 if scenario["channels"] > 1 else len(servers),
            "message_size": 64,
        }
        if soak:
            keys = ("rate", "churn", "ephemeral", "lifetime", "sample_interval", "buffer",
                    "transports", "flood")  # fmt: skip
            spec.update({key: scenario[key] for key in keys})
            spec["drain"] = max(spec["drain"], 60)
            row["duration"] = scenario["duration"]
        done = subprocess.run(
            [
                *pinned(loadgen_cpu),
                sys.executable,
                str(ROOT / "bench" / ("soak.py" if soak else "loadgen.py")),
                json.dumps(spec),
            ],
            capture_output=True,
            text=True,
            # The soak runs for its duration, then drains (up to a minute or two).
            timeout=max(args.scenario_timeout, spec["duration"] + 240)
            if soak
            else args.scenario_timeout,
            cwd=ROOT,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        else:
            row.update(json.loads(lines[-1]))
            if row.get("drained") is False:
                row["error"] = f"not every message was delivered within {spec['drain']:.0f} s"
    except subprocess.TimeoutExpired:
        row["error"] = f"load generator exceeded {args.scenario_timeout} s"
    except Exception as exc:  # reported in the results, never hidden
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.close()
    return row


def our_transports() -> tuple[list[str], dict[str, str]]:
    from pushserver.config import AVAILABLE_TRANSPORTS

    ok, skipped = [], {}
    for transport in TRANSPORTS:
        if CONFIG_NAMES[transport] in AVAILABLE_TRANSPORTS:
            ok.append(transport)
        else:
            skipped[transport] = "not implemented in this version of pushserver"
    return ok, skipped


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def table(rows: list[dict]) -> str:
    head = ["target", "transport", "scenario", "connected", "deliveries/s", "CPU µs/deliv",
            "p50 ms", "p99 ms", "KiB/idle conn", "lost/dup/ooo", "server CPU",
            "loadgen CPU"]  # fmt: skip
    lines = [head]
    for r in rows:
        if "error" in r and "deliveries" not in r:
            error = "error: " + r["error"][:60]
            cells = [r["target"], r["transport"], r["scenario"], fmt(r.get("connected")), error]
            lines.append(cells + [""] * (len(head) - len(cells)))
            continue
        mem = r.get("memory_per_idle_connection_bytes")
        lines.append([
            r["target"], r["transport"], r["scenario"],
            f"{r['connected']:,}/{r['subscribers']:,}",
            fmt(r.get("deliveries_per_second")),
            fmt(cpu_per_delivery(r)),
            fmt(r.get("latency_ms_p50")),
            fmt(r.get("latency_ms_p99")),
            fmt(mem / 1024 if mem is not None else None),
            f"{r['lost']}/{r['duplicated']}/{r['out_of_order']}"
            + (" (undrained)" if r.get("drained") is False else ""),
            percent(r.get("server_cpu_utilisation")),
            percent(r.get("loadgen_cpu_utilisation")),
        ])  # fmt: skip
    return render(lines)


def render(lines: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = []
    for k, line in enumerate(lines):
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


#: Below this much server CPU in the measured phase, 10 ms clock ticks make CPU per
#: delivery meaningless (the low-rate latency scenarios): no figure, no ratio.
MIN_CPU_SECONDS = 0.25


def cpu_per_delivery(row: dict | None) -> float | None:
    if not row or (row.get("server_cpu_seconds") or 0) < MIN_CPU_SECONDS:
        return None
    return row.get("cpu_us_per_delivery")


def ratios(rows: list[dict]) -> list[dict]:
    """Ours against each reference, per transport and scenario.

    With ``--repeat`` each target ran once per round, the targets of a round back to back:
    a ratio is taken within each round (ours and the reference measured minutes apart on
    the same machine) and the median of the rounds' ratios is reported, with each round's
    in ``<other>_ratios``; the µs columns are the medians of each target's readings. On a
    shared machine a single reading moves by a third (docs/benchmark.md); the median of
    alternating rounds much less.
    """
    readings: dict[tuple[str, str, str], dict[int, float | None]] = {}
    for r in rows:
        key = (r["target"], r["transport"], r["scenario"])
        readings.setdefault(key, {})[r.get("round", 0)] = cpu_per_delivery(r)
    found = []
    seen = set()
    for r in rows:
        key = (r["transport"], r["scenario"])
        if r["target"] != "ours" or key in seen:
            continue
        seen.add(key)
        ours = readings[("ours", *key)]
        entry = {"transport": key[0], "scenario": key[1], "ours_cpu_us": median(ours.values())}
        for other in ("floor", "nchan", "ours-uvicorn", "floor-uvicorn"):
            theirs = readings.get((other, *key), {})
            entry[f"{other}_cpu_us"] = median(theirs.values())
            per_round = [
                round(ours[n] / theirs[n], 2) for n in sorted(ours) if ours[n] and theirs.get(n)
            ]
            entry[f"ours_over_{other}"] = median(per_round)
            if len(per_round) > 1:
                entry[f"{other}_ratios"] = per_round
        found.append(entry)
    return found


def median(values) -> float | None:
    """The median of the values that are not None, None if there are none."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    value = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
    return round(value, 2)


def goals_met(rows: list[dict], entries: list[dict]) -> list[dict]:
    """The issue's targets, each with what was measured here."""
    found = []
    for transport in TRANSPORTS:
        worst = [
            e["ours_over_floor"]
            for e in entries
            if e["transport"] == transport
            and e["scenario"].startswith("fanout")
            and e["ours_over_floor"]
        ]
        rounds_taken = any(e.get("floor_ratios") for e in entries if e["transport"] == transport)
        if worst:
            found.append({
                "target": f"{transport}: CPU per delivery within 1.3x of the floor (fan-out)",
                "measured": f"{max(worst):.2f}x (worst fan-out scenario"
                + (", median of the rounds)" if rounds_taken else ")"),
                "met": max(worst) <= 1.3,
            })  # fmt: skip
    # With --repeat, one line per transport and scenario: the median of the rounds (each
    # round's reading beside it), met when the median is and every round held them all.
    rounds: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["target"] == "ours" and "connected" in r:
            rounds.setdefault((r["transport"], r["scenario"]), []).append(r)
    for (transport, scenario), group in rounds.items():
        each = "" if len(group) == 1 else ", median of {} rounds: {}"
        if scenario == "fanout-10000" and transport in ("sse", "ws"):
            # A round without a reading is not a reading of 0 KiB: the target is then missed.
            kib = [b / 1024 for r in group if (b := r.get("memory_per_idle_connection_bytes"))]
            held = min(r["connected"] for r in group)
            mem = median(kib) or 0.0
            found.append({
                "target": f"{transport}: 10,000 subscribers held, under 16 KiB each",
                "measured": f"{held:,} held, {mem:.1f} KiB each"
                + each.format(len(group), ", ".join(f"{k:.1f}" for k in kib)),
                "met": held == 10000 and len(kib) == len(group) and mem < 16,
            })  # fmt: skip
        latency = [r for r in group if r.get("latency_ms_p99") is not None]
        if scenario.startswith("latency-") and latency:
            # Met only when every round measured it: a round that failed is not left out.
            p99s = [r["latency_ms_p99"] for r in latency]
            p99 = median(p99s) or 0.0
            rate = latency[0].get("rate", 0)
            achieved = min(r.get("publishes_per_second") or 0 for r in latency)
            found.append({
                "target": f"{transport}: p99 latency under 50 ms, {scenario} at 50/s",
                "measured": f"p99 {p99:.1f} ms"
                + each.format(len(group), ", ".join(f"{v:.1f}" for v in p99s))
                + f"; publishes achieved {achieved:.1f}/s of {rate}/s offered"
                + ("" if len(latency) == 1 else " (slowest round)"),
                "met": p99 < 50
                and len(latency) == len(group)
                and not any("error" in r for r in group)
                and achieved >= 0.95 * rate,
            })  # fmt: skip
    return found


#: How the Redis tables name each target: store x server processes.
SETUPS = {
    "ours": "memory x1",
    "redis-1": "redis x1",
    "redis-2": "redis x2",
    "redis-4": "redis x4",
    "cluster-2": "cluster(3) x2",
    "cluster-4": "cluster(3) x4",
}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def redis_ratios(rows: list[dict]) -> list[dict]:
    """Per transport and scenario: what Redis costs one process, and what a second buys.

    ``redis1_over_memory_cost``: CPU per delivery of one server process on Redis over the
    memory store's (server only; ``..._with_redis`` adds Redis's own CPU).
    ``redis2_over_redis1_throughput``: deliveries/s (and publishes/s) of two processes
    sharing Redis over one. ``redis2_over_redis1_cost``: CPU per delivery summed over both
    processes over one process's.
    """
    measured = {(r["target"], r["transport"], r["scenario"]): r for r in rows if "deliveries" in r}
    keys = dict.fromkeys(
        (r["transport"], r["scenario"]) for r in rows if r["target"] in REDIS_TARGETS
    )
    found = []
    for key in keys:
        memory, one, two = (measured.get((t, *key), {}) for t in ("ours", "redis-1", "redis-2"))
        memory_us, one_us, two_us = (cpu_per_delivery(r) for r in (memory, one, two))
        one_redis = one.get("redis_cpu_us_per_delivery")
        found.append({
            "transport": key[0],
            "scenario": key[1],
            "memory_cpu_us": memory_us,
            "redis1_cpu_us": one_us,
            "redis1_redis_cpu_us": one_redis,
            "redis2_cpu_us": two_us,
            "redis2_redis_cpu_us": two.get("redis_cpu_us_per_delivery"),
            "memory_deliveries_per_second": memory.get("deliveries_per_second"),
            "redis1_deliveries_per_second": one.get("deliveries_per_second"),
            "redis2_deliveries_per_second": two.get("deliveries_per_second"),
            "redis1_over_memory_cost": ratio(one_us, memory_us),
            "redis1_over_memory_cost_with_redis": ratio(
                one_us + one_redis if one_us and one_redis else None, memory_us
            ),
            "redis2_over_redis1_throughput": ratio(
                two.get("deliveries_per_second"), one.get("deliveries_per_second")
            ),
            "redis2_over_redis1_publishes": ratio(
                two.get("publishes_per_second"), one.get("publishes_per_second")
            ),
            "redis2_over_redis1_cost": ratio(two_us, one_us),
        })  # fmt: skip
    return found


def redis_table(rows: list[dict]) -> str:
    """The rows of the Redis comparison: ours on memory and on Redis, one and two processes."""
    head = ["setup", "transport", "scenario", "connected", "deliveries/s", "publishes/s",
            "server µs/deliv", "Redis µs/deliv", "Redis cmds/pub", "Redis cmds/deliv",
            "p50 ms", "p99 ms", "lost/dup/ooo",
            "server CPU", "Redis CPU", "loadgen CPU", "all CPU"]  # fmt: skip
    lines = [head]
    for r in rows:
        if r["target"] not in SETUPS:
            continue
        if "deliveries" not in r:
            error = "error: " + r.get("error", "?")[:60]
            cells = [
                SETUPS[r["target"]],
                r["transport"],
                r["scenario"],
                fmt(r.get("connected")),
                error,
            ]
            lines.append(cells + [""] * (len(head) - len(cells)))
            continue
        split = r.get("connected_per_server")
        each = r.get("server_cpu_seconds_each") or []
        wall = r["deliveries"] / r["deliveries_per_second"] if r.get("deliveries_per_second") else 0
        utilisation = [c / wall for c in each] if wall and len(each) > 1 else []
        shares = [r.get("server_cpu_utilisation"), r.get("redis_cpu_utilisation"),
                  r.get("loadgen_cpu_utilisation")]  # fmt: skip
        lines.append([
            SETUPS[r["target"]], r["transport"], r["scenario"],
            f"{r['connected']:,}/{r['subscribers']:,}"
            + (" (" + "+".join(f"{k:,}" for k in split) + ")" if split else ""),
            fmt(r.get("deliveries_per_second")),
            fmt(r.get("publishes_per_second")),
            fmt(cpu_per_delivery(r)),
            fmt(r.get("redis_cpu_us_per_delivery")),
            fmt(r.get("redis_commands_per_publish"), 2),
            fmt(r.get("redis_commands_per_delivery"), 2),
            fmt(r.get("latency_ms_p50")),
            fmt(r.get("latency_ms_p99")),
            f"{r['lost']}/{r['duplicated']}/{r['out_of_order']}"
            + (" (undrained)" if r.get("drained") is False else ""),
            percent(r.get("server_cpu_utilisation"))
            + (" (" + "+".join(percent(u) for u in utilisation) + ")" if utilisation else ""),
            percent(r.get("redis_cpu_utilisation")),
            percent(r.get("loadgen_cpu_utilisation")),
            percent(sum(x for x in shares if x is not None)),
        ])  # fmt: skip
    return render(lines)


def redis_ratio_table(entries: list[dict]) -> str:
    lines = [["transport", "scenario", "memory x1 µs", "redis x1 µs (+Redis)",
              "redis x2 µs (+Redis)", "redis x1 / memory x1 cost",
              "redis x2 / redis x1 deliveries/s", "redis x2 / redis x1 cost"]]  # fmt: skip
    for e in entries:
        lines.append([
            e["transport"], e["scenario"], fmt(e["memory_cpu_us"]),
            f"{fmt(e['redis1_cpu_us'])} (+{fmt(e['redis1_redis_cpu_us'])})",
            f"{fmt(e['redis2_cpu_us'])} (+{fmt(e['redis2_redis_cpu_us'])})",
            f"{fmt(e['redis1_over_memory_cost'], 2)}"
            f" ({fmt(e['redis1_over_memory_cost_with_redis'], 2)} with Redis)",
            fmt(e["redis2_over_redis1_throughput"], 2),
            fmt(e["redis2_over_redis1_cost"], 2),
        ])  # fmt: skip
    return render(lines)


def soak_series(row: dict) -> list[dict]:
    """The soak's samples summarised per minute (per tenth of the run when shorter than 5)."""
    samples = row.get("samples") or []
    duration = row.get("duration") or 0
    step = 60.0 if duration >= 300 else max(duration / 6, 0.5)
    found = []
    previous = samples[0] if samples else None
    for k in range(max(1, round(duration / step))):
        part = [s for s in samples if k * step < s["t"] <= (k + 1) * step]
        if not part:
            continue
        rss = sorted(s["rss_kib"] for s in part)
        end = part[-1]
        seconds = end["t"] - previous["t"]
        found.append({
            "from_s": round(k * step, 1), "to_s": round((k + 1) * step, 1),
            "rss_median_kib": rss[len(rss) // 2], "rss_min_kib": rss[0], "rss_max_kib": rss[-1],
            "fds_max": max(s["fds"] for s in part),
            "connections_median": sorted(s["connections"] for s in part)[len(part) // 2],
            "subscribers_median": sorted(s["subscribers"] for s in part)[len(part) // 2],
            "ephemeral_channels_max": max(s["ephemeral_channels"] for s in part),
            "server_cpu": round((end["cpu_seconds"] - previous["cpu_seconds"]) / seconds, 3)
            if seconds > 0 else None,
            "deliveries_per_second": round((end["deliveries"] - previous["deliveries"]) / seconds)
            if seconds > 0 else None,
            "reconnects": end["reconnects"] - previous["reconnects"],
        })  # fmt: skip
        previous = end
    return found


def soak_table(row: dict) -> str:
    """The soak's memory over time, one line per minute, and its verdict."""
    if "samples" not in row:
        return f"soak ({row['target']}): error: {row.get('error', '?')}"
    unit = "min" if row["duration"] >= 300 else "s"
    scale = 60 if unit == "min" else 1
    lines = [[unit, "RSS MiB (median)", "min-max MiB", "fds max", "connections", "subscribers",
              "ephemeral ch.", "server CPU", "deliveries/s", "reconnects"]]  # fmt: skip
    for entry in soak_series(row):
        lines.append([
            f"{entry['from_s'] / scale:g}-{entry['to_s'] / scale:g}",
            f"{entry['rss_median_kib'] / 1024:.1f}",
            f"{entry['rss_min_kib'] / 1024:.1f}-{entry['rss_max_kib'] / 1024:.1f}",
            fmt(entry["fds_max"]), fmt(entry["connections_median"]),
            fmt(entry["subscribers_median"]), fmt(entry["ephemeral_channels_max"]),
            percent(entry["server_cpu"]), fmt(entry["deliveries_per_second"]),
            fmt(entry["reconnects"]),
        ])  # fmt: skip
    return "\n".join([
        f"soak ({row['target']}): {row['subscribers']:,} subscribers "
        f"({', '.join(f'{v:,} {k}' for k, v in row['transports'].items())}) on "
        f"{row['channels']} channels, {row['duration']:.0f} s"
        + (f"; the server collects garbage every {row['server_gc_every']:g} s"
           if row.get("server_gc_every") else ""),
        render(lines),
        soak_summary(row),
    ])  # fmt: skip


def soak_summary(row: dict) -> str:
    m = row["memory"]
    eph = row["ephemeral"]
    if m.get("flat") is None:
        memory = f"memory: no verdict ({m.get('why')})"
    else:
        memory = (
            f"memory {'FLAT' if m['flat'] else 'NOT FLAT'}: median RSS "
            f"{m['baseline_median_kib'] / 1024:.1f} MiB at {m['baseline_window_seconds'][0]:.0f}-"
            f"{m['baseline_window_seconds'][1]:.0f} s, {m['final_median_kib'] / 1024:.1f} MiB at "
            f"{m['final_window_seconds'][0]:.0f}-{m['final_window_seconds'][1]:.0f} s "
            f"({m['growth_kib']:+,.0f} KiB, limit {m['growth_limit_kib']:,} KiB); slope after "
            f"warm-up {m['slope_kib_per_minute']:+,.1f} KiB/min (limit "
            f"{m['slope_limit_kib_per_minute']} KiB/min, i.e. a leak of "
            f"{m['detectable_bytes_per_cycle']} bytes per connection cycle)"
        )
        if m.get("fill_covered") is False:  # too short a run: the baseline is still filling
            memory += (
                f"; the warm-up ({m['warmup_seconds']:.0f} s) is shorter than the "
                f"{m['fill_seconds']:.0f} s the buffers and the flood's channels take to fill"
            )
    return "\n".join([
        memory,
        f"deliveries {row['deliveries']:,} ({row['publishes']:,} publishes), lost/dup/ooo "
        f"{row['lost']}/{row['duplicated']}/{row['out_of_order']} (gaps {row['gaps']}); "
        f"closes {row['closes']['abrupt']:,} abrupt + {row['closes']['clean']:,} clean, "
        f"{row['resumed']:,} resumed, {row['fresh']:,} fresh; short-lived channels "
        f"{eph['created']:,} created, {eph['deleted']:,} deleted, "
        f"{eph['deletion_seen']:,}/{eph['with_subscriber']:,} subscribers saw the deletion; "
        f"abandoned-channel flood {row.get('flood', {}).get('sent', 0):,} long polls hung up "
        f"({row.get('flood', {}).get('closed', 0):,} closed by the server); "
        f"errors {row['errors'] or 'none'}",
    ])  # fmt: skip


def ratio_table(entries: list[dict]) -> str:
    lines = [
        ["transport", "scenario", "ours µs", "floor µs", "nchan µs", "ours/floor", "ours/nchan"]
    ]
    for e in entries:
        lines.append(
            [
                e["transport"],
                e["scenario"],
                fmt(e["ours_cpu_us"]),
                fmt(e["floor_cpu_us"]),
                fmt(e["nchan_cpu_us"]),
                with_rounds(e, "floor"),
                with_rounds(e, "nchan"),
            ]
        )
    return render(lines)


def with_rounds(entry: dict, other: str) -> str:
    """The median ratio, and with ``--repeat`` each round's in brackets."""
    text = fmt(entry[f"ours_over_{other}"], 2)
    rounds = entry.get(f"{other}_ratios")
    if rounds:
        text += " (" + ", ".join(f"{value:.2f}" for value in rounds) + ")"
    return text


def server_table(rows: list[dict]) -> str:
    """hypercorn against uvicorn, for ours and the floor: CPU per delivery, memory per idle
    connection, and uvicorn's share of hypercorn's CPU."""
    by_key = {(r["target"], r["transport"], r["scenario"]): r for r in rows}
    lines = [["transport", "scenario", "server", "ours µs", "floor µs", "ours/floor",
              "ours KiB/conn", "floor KiB/conn"]]  # fmt: skip
    pairs = {(r["transport"], r["scenario"]) for r in rows if r["target"] in UVICORN_TARGETS}
    for transport, name in sorted(pairs):
        for server, suffix in (("hypercorn", ""), ("uvicorn", "-uvicorn")):
            ours = by_key.get((f"ours{suffix}", transport, name))
            floor = by_key.get((f"floor{suffix}", transport, name))
            mem = [(r or {}).get("memory_per_idle_connection_bytes") for r in (ours, floor)]
            lines.append([
                transport, name, server,
                fmt(cpu_per_delivery(ours)), fmt(cpu_per_delivery(floor)),
                fmt(ratio(cpu_per_delivery(ours), cpu_per_delivery(floor)), 2),
                *(fmt(m / 1024 if m is not None else None) for m in mem),
            ])  # fmt: skip
    return render(lines)


def machine() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hypercorn": version("hypercorn"),
        "uvloop": version("uvloop"),
        "anyio": version("anyio"),
        "nchan": nchan.version() if nchan.available() else None,
        "redis": redisserver.version() if redisserver.available() else None,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "pushserver_uncommitted_changes": bool(git("status", "--porcelain", "pushserver")),
    }


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return ""
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 subscribers, 1 s phases")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {', '.join((*TARGETS, *UVICORN_TARGETS, *REDIS_TARGETS))}",
    )
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--scenarios", default="", help="comma-separated names; default all")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--drain", type=float, default=20.0, help="max seconds to wait for deliveries"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=2,
        help="throughput scenarios: messages in flight per channel (closed loop)",
    )
    parser.add_argument("--scenario-timeout", type=float, default=240.0)
    parser.add_argument(
        "--duration",
        type=float,
        help="the soak's length in seconds (default 600; 6 with --quick); no other scenario's",
    )
    parser.add_argument(
        "--gc-every",
        type=float,
        default=0,
        help="soak only: the server runs a full gc.collect() every this many seconds "
        "(default 0: when Python decides), to tell uncollected cycles from a leak",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every target per transport and scenario, alternating; ratios are "
        "taken within each round and their median reported (default 1)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)

    nofile, hard = raise_fd_limit()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - {*TARGETS, *UVICORN_TARGETS, *REDIS_TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    if args.repeat > 1 and set(targets) - set(TARGETS):
        # The uvicorn and Redis tables read one row per target, not the rounds' medians.
        parser.error(f"--repeat takes only the targets {', '.join(TARGETS)}")
    wanted = [t for t in args.transports.split(",") if t]
    ours_ok, skipped = our_transports()
    notes = {f"ours/{t}": why for t, why in skipped.items() if t in wanted}
    if "nchan" in targets and not nchan.available():
        targets.remove("nchan")
        notes["nchan"] = f"not installed ({nchan.NGINX}, {nchan.MODULE})"
    if set(targets) & set(REDIS_TARGETS) and not redisserver.available():
        targets = [t for t in targets if t not in REDIS_TARGETS]
        notes["redis"] = f"not installed ({redisserver.REDIS_SERVER})"
    if set(targets) & set(UVICORN_TARGETS) and (missing := uvicornserve.available()):
        targets = [t for t in targets if t not in UVICORN_TARGETS]
        notes["uvicorn"] = f"{', '.join(UVICORN_TARGETS)} skipped: uvicorn/httptools {missing}"
    names = [name for name in args.scenarios.split(",") if name]
    chosen = [
        s for s in scenarios(args.quick) if (s["name"] in names if names else not s.get("optional"))
    ]
    # The soak runs once per target, every transport at once: apart from the others.
    soaks = [
        {
            **soak_scenario(args.quick, args.duration),
            "transports": [t for t in wanted if t in ours_ok],
        }
        for s in chosen
        if s["mode"] == "soak"
    ]
    biggest = max(s["subscribers"] for s in chosen)
    if not pinned(SERVER_CPU):
        notes["cpus"] = "taskset or a second CPU is missing: server and load generator share CPUs"
    if hard < biggest + 100:
        notes["fd_limit"] = (
            f"hard RLIMIT_NOFILE is {hard}: scenarios above ~{hard - 100} connections fall short"
        )

    if soaks and set(targets) - set(SOAK_TARGETS):
        notes["soak"] = "runs against ours and redis-1 only (one server process)"

    load_at_start = os.getloadavg()
    rows = []
    seq = 0
    for transport in wanted:
        for scenario in chosen:
            if scenario["mode"] == "soak":
                continue
            for round_ in range(args.repeat):
                for target in targets:
                    if (
                        target not in ("floor", "floor-uvicorn", "nchan")
                        and transport not in ours_ok
                    ):
                        continue
                    seq += 1
                    label = f" (round {round_ + 1})" if args.repeat > 1 else ""
                    print(
                        f"... {target} {transport} {scenario['name']}{label}",
                        file=sys.stderr,
                        flush=True,
                    )
                    row = run_one(target, transport, scenario, args, nofile, seq)
                    row["round"] = round_
                    rows.append(row)

    soak_rows = []
    for scenario in soaks:
        for target in targets:
            if target in SOAK_TARGETS:
                seq += 1
                print(
                    f"... {target} soak {scenario['duration']:.0f} s", file=sys.stderr, flush=True
                )
                soak_rows.append(run_one(target, "all", scenario, args, nofile, seq))

    entries = ratios(rows)
    goals = goals_met(rows, entries)
    scale_out = redis_ratios(rows)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "repeat": args.repeat,
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "setup": {
            "server_cpu": SERVER_CPU,
            "loadgen_cpu": LOADGEN_CPU,
            "loop": args.loop,
            "window": args.window,
            "server": "hypercorn (embedded, pushserver.server.serve) on anyio/asyncio",
            "message_size_bytes": 64,
            "fd_limit": [nofile, hard],
            "redis_placement": {t: PLACEMENT[t] for t in targets if t in PLACEMENT},
        },
        "notes": notes,
        "results": rows,
        "ratios": entries,
        "redis_ratios": scale_out,
        "targets": goals,
    }
    if soak_rows:
        report["soak"] = soak_rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if rows or not soak_rows:
        print(table(rows))
        print()
        print(ratio_table(entries))
        print()
    if set(targets) & set(UVICORN_TARGETS):
        print(server_table(rows))
        print()
    if scale_out:
        print(redis_table(rows))
        print()
        print(redis_ratio_table(scale_out))
        print()
    for row in soak_rows:
        print(soak_table(row))
        print()
    for goal in goals:
        print(f"{'met   ' if goal['met'] else 'MISSED'} {goal['target']}: {goal['measured']}")
    for key, note in notes.items():
        print(f"note: {key}: {note}")
    report["machine"]["load_average_at_end"] = os.getloadavg()
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"JSON: {out}")
    bad = [
        r
        for r in rows + soak_rows
        if "error" in r or r.get("lost") or r.get("duplicated") or r.get("out_of_order")
    ]
    # A few seconds (--quick) say nothing about flatness: only a full soak fails on it.
    bad += [r for r in soak_rows if not args.quick and r.get("memory", {}).get("flat") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
