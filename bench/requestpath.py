"""The request path, server by server, against nchan in the same run (issue 14).

``python -m bench.requestpath --servers hypercorn,uvicorn --rounds 3`` runs, per round and
per target (ours under each server, then nginx + nchan; the order turns each round):

- **publish**: 16 keep-alive connections each POSTing one message after another (16 in
  flight) to channels without subscribers, for ``--duration`` seconds: the server's CPU
  per publish;
- **long-poll fan-out**: 500 long-poll subscribers on one channel, the closed loop of
  ``bench/loadgen.py`` (each delivery is a response and a new request): the server's CPU
  per delivery;
- **connect**: 3,000 new connections, each with one long-poll request the server holds:
  the server's CPU per connect (accept, parse, subscribe), read per thread in nanoseconds;
- **stream fan-out** (``--fanout sse,ws``): 1,000 subscribers per transport, the same
  closed loop: CPU per delivery, compared with ours under hypercorn (the goal: no
  transport costs more per delivery under another server).

Servers run on CPU 0 and the load on CPU 1 as in ``python -m bench``; ours is
``bench/server.py`` (``--asgi-server`` picks the server; uvicorn runs as
``runpushserver --server uvicorn`` configures it). Beside ours under each server runs the
**floor** under the same server, configured the same way (``floor-<server>``:
``bench/floor.py --as-ours``, a bare ASGI app that answers a publish with 201 and holds long
polls until a publish on their channel: what the server itself costs; ``--no-floor`` leaves
it out). Each ratio to nchan is taken within a round; the table gives the median of the
rounds' ratios and each round's in brackets, and ours / the floor under the same server.

Before the measured rounds, a **warm-up** pass runs every load once for every target,
``--warmup`` seconds per phase (1 s; 0 for none), unmeasured (kept as ``warmup`` in the
JSON, not in the table). Each measure still gets a fresh server process: the pass warms the
machine (the page cache, the interpreter's files, nginx), on which the first round read
highest for every server in earlier runs.
JSON goes to ``bench/results/requestpath.json`` (``--out``).

``python -m bench.requestpath publish '<json spec>'`` is the publish load on its own, and
``... connect '<json spec>'`` the connect load (what the runner starts, pinned to CPU 1);
each prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.clients import Publisher  # noqa: E402
from bench.common import cpu_seconds, raise_fd_limit  # noqa: E402

IN_FLIGHT = 16
SUBSCRIBERS = 500
#: New connections of the connect measure, each with a held long-poll request.
CONNECTIONS = 3000
#: ours-<server> targets; nchan is always run when installed.
SERVERS = ("hypercorn", "uvicorn", "granian")
#: A fan-out figure from less server CPU than this (10 clock ticks: about ±10 %) is left
#: out (--quick: every figure is kept, for the smoke test).
MIN_CPU_SECONDS = 0.1
#: The goals: ours / nchan, CPU per unit (issue 14).
GOALS = {"publish": 6.0, "longpoll": 6.0, "connect": 3.0}


# -- the publish load -----------------------------------------------------------------------


async def publish_load(spec: dict) -> dict:
    host, port, pid = spec["host"], spec["port"], spec["server_pid"]
    loop = asyncio.get_running_loop()
    publishers: list[Publisher] = []
    for _ in range(spec.get("in_flight", IN_FLIGHT)):
        _, publisher = await loop.create_connection(lambda: Publisher(host.encode()), host, port)
        publishers.append(publisher)
    statuses: dict[int, int] = {}
    count = 0
    stop = False
    size = spec.get("message_size", 64)

    async def post(k: int, seq: int) -> int:
        if publishers[k].dead:
            _, publishers[k] = await loop.create_connection(
                lambda: Publisher(host.encode()), host, port
            )
        return await publishers[k].post(f"/pub/{spec['prefix']}-{k}".encode(), seq, size)

    async def warm(k: int) -> None:
        # A few publishes per connection create the channels and warm the caches.
        for seq in range(20):
            await post(k, seq)

    async def run(k: int) -> None:
        nonlocal count
        seq = 20
        while not stop:
            status = await post(k, seq)
            seq += 1
            statuses[status] = statuses.get(status, 0) + 1
            count += 1

    await asyncio.gather(*(warm(k) for k in range(len(publishers))))
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    tasks = [asyncio.ensure_future(run(k)) for k in range(len(publishers))]
    await asyncio.sleep(spec["duration"])  # the measured phase's length, not synchronisation
    stop = True
    await asyncio.gather(*tasks)
    wall, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    for publisher in publishers:
        if publisher.transport is not None:
            publisher.transport.close()
    return {
        "publishes": count,
        "publishes_per_second": round(count / wall),
        "server_cpu_seconds": round(cpu, 3),
        "cpu_us_per_publish": round(cpu * 1e6 / count, 2) if count else None,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in nanoseconds (``/proc/<pid>/task/*/schedstat``):
    a connect costs nchan a few tens of µs, under the 10 ms tick of ``/proc/<pid>/stat``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


class Held(asyncio.Protocol):
    """A connection that sends one long-poll request and waits (the server holds it)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.answered = True


async def quiet(pid: int, interval: float = 0.2, threshold_ns: int = 2_000_000) -> None:
    """Until the server spends under ``threshold_ns`` of CPU in ``interval`` (it has
    processed what it was sent); bounded by 30 s."""
    deadline = time.monotonic() + 30
    before = cpu_ns(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)  # sampling another process's CPU clock
        after = cpu_ns(pid)
        if after - before < threshold_ns:
            return
        before = after


async def connect_load(spec: dict) -> dict:
    """``connections`` new connections, each with one long-poll request the server holds:
    the server's CPU per connect (accept, parse, subscribe), from the first connect until
    the server is quiet again (at most 2 ms of CPU in 0.2 s)."""
    host, port, pid, n = spec["host"], spec["port"], spec["server_pid"], spec["connections"]
    loop = asyncio.get_running_loop()
    channels = 10
    requests = [
        f"GET /sub/{spec['prefix']}-{c} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for c in range(channels)
    ]
    held: list[Held] = []
    errors = 0
    await quiet(pid)
    before = cpu_ns(pid)
    for start in range(0, n, 100):  # 100 connecting at a time
        batch = range(start, min(n, start + 100))
        results = await asyncio.gather(
            *(loop.create_connection(lambda i=i: Held(requests[i % channels]), host, port)
              for i in batch),
            return_exceptions=True,
        )  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
            else:
                held.append(result[1])
    await quiet(pid)
    used = cpu_ns(pid) - before
    # What the server spends holding them afterwards, for the record (timers; not taken
    # off: its own noise would be).
    idle_before = cpu_ns(pid)
    await asyncio.sleep(1.0)  # measuring idle CPU over a span, not synchronising
    idle = cpu_ns(pid) - idle_before
    answered = sum(h.answered for h in held)
    for h in held:
        if h.transport is not None:
            h.transport.close()
    connected = len(held)
    return {
        "connections": connected,
        "connect_errors": errors,
        "answered_early": answered,
        "server_cpu_ms": round(used / 1e6, 2),
        "idle_cpu_ms_per_second": round(idle / 1e6, 2),
        "cpu_us_per_connect": round(used / 1e3 / connected, 2) if connected else None,
    }


# -- the runner -----------------------------------------------------------------------------


def start_target(target: str, args: argparse.Namespace):
    from bench import run

    if target == "nchan":
        return run.NchanServer(run.free_port(), args.nofile)
    kind, _, name = target.partition("-")
    if kind == "floor":  # bench/floor.py, served as ours is under the same server
        server = run.PythonServer("floor.py", args.loop, extra=("--asgi-server", name, "--as-ours"))
    else:
        server = run.PythonServer("server.py", args.loop, extra=("--asgi-server", name))
    if name == "granian":
        # granian's worker, a child process, serves: its CPU is the server's.
        server.pid = serving_child(server.process.pid, server.port)
    return server


def serving_child(pid: int, port: int, timeout: float = 30) -> int:
    """The pid of ``pid``'s one child once the port accepts connections (bounded)."""
    import socket

    from bench.common import children

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(pid)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            found = []
        if len(found) == 1:
            return found[0]
        time.sleep(0.1)  # polling another process's startup
    raise RuntimeError(f"no granian worker serving port {port}")


def load(script: list[str], spec: dict, timeout: float) -> dict:
    from bench import run

    done = subprocess.run(
        [*run.pinned(run.LOADGEN_CPU), sys.executable, *script, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(lines[-1])


def fanout_spec(server, transport: str, subscribers: int, prefix: str, args) -> dict:
    return {
        "host": "127.0.0.1", "ports": [server.port], "server_pids": [server.pid],
        "redis_pid": None, "transport": transport, "prefix": prefix,
        "subscribers": subscribers, "channels": 1, "mode": "throughput",
        "rate": None, "duration": args.duration, "drain": 20, "window": 2,
        "publishers": 1, "message_size": 64,
    }  # fmt: skip


def measure(target: str, args: argparse.Namespace, seq: int) -> dict:
    """One target's figures (a fresh server for each load)."""
    row: dict = {"target": target}
    phases: list[tuple[str, list[str], object]] = [
        ("publish", ["-m", "bench.requestpath", "publish"],
         lambda s: {"host": "127.0.0.1", "port": s.port, "server_pid": s.pid,
                    "prefix": f"p{seq}", "duration": args.duration}),
        ("connect", ["-m", "bench.requestpath", "connect"],
         lambda s: {"host": "127.0.0.1", "port": s.port, "server_pid": s.pid,
                    "prefix": f"c{seq}", "connections": args.connections}),
        ("longpoll", [str(ROOT / "bench" / "loadgen.py")],
         lambda s: fanout_spec(s, "longpoll", args.subscribers, f"l{seq}", args)),
    ]  # fmt: skip
    if "request" not in args.sets:
        phases = []
    for transport in args.fanout if "fanout" in args.sets else ():
        phases.append((
            f"fanout-{transport}", [str(ROOT / "bench" / "loadgen.py")],
            lambda s, t=transport: fanout_spec(s, t, args.fanout_subscribers, f"f{seq}", args),
        ))  # fmt: skip
    for name, script, spec in phases:
        server = start_target(target, args)
        try:
            row[name] = load(script, spec(server), 180)  # type: ignore[operator]
        finally:
            server.stop()
    return row


def _delivery(result: dict | None) -> float | None:
    result = result or {}
    if result.get("error") or result.get("lost") or result.get("duplicated"):
        return None
    if (result.get("server_cpu_seconds") or 0) < MIN_CPU_SECONDS:  # too few clock ticks
        return None
    return result.get("cpu_us_per_delivery")


def figures(row: dict) -> dict[str, float | None]:
    connect = row.get("connect") or {}
    found = {
        "publish": (row.get("publish") or {}).get("cpu_us_per_publish"),
        "longpoll": _delivery(row.get("longpoll")),
        "connect": None if connect.get("connect_errors") else connect.get("cpu_us_per_connect"),
    }
    for key, value in row.items():
        if key.startswith("fanout-"):
            found[key] = _delivery(value)
    return found


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value and base else None


def summarise(rounds: list[list[dict]], targets: list[str]) -> list[dict]:
    """Per target and measure: each round's figure and its ratios to nchan and to ours
    under hypercorn (taken within the round), and the medians of the rounds."""
    entries = []
    names = list(dict.fromkeys(n for rows in rounds for r in rows for n in figures(r)))
    for target in targets:
        for name in names:
            values, to_nchan, to_hypercorn, to_floor = [], [], [], []
            floor = "floor-" + target.removeprefix("ours-")
            for rows in rounds:
                by = {r["target"]: figures(r) for r in rows}
                value = by.get(target, {}).get(name)
                values.append(value)
                to_nchan.append(_ratio(value, by.get("nchan", {}).get(name)))
                to_hypercorn.append(_ratio(value, by.get("ours-hypercorn", {}).get(name)))
                to_floor.append(_ratio(value, by.get(floor, {}).get(name)))
            entries.append({
                "target": target, "measure": name, "values": values,
                "ratios": to_nchan, "ratios_to_hypercorn": to_hypercorn,
                "ratios_to_floor": to_floor,
                "median_value": _median(values),
                "median_ratio": _median(to_nchan),
                "median_ratio_to_hypercorn": _median(to_hypercorn),
                "median_ratio_to_floor": _median(to_floor),
            })  # fmt: skip
    return entries


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _with_rounds(median: float | None, rounds: list[float | None]) -> str:
    if median is None:
        return "-"
    return f"{median:.2f}x [" + ", ".join("-" if r is None else f"{r:.2f}" for r in rounds) + "]"


def table(entries: list[dict]) -> str:
    units = {"publish": "µs/publish", "connect": "µs/connect"}
    floors = any(e["target"].startswith("floor-") for e in entries)
    lines = ["| target | measure | CPU (median) | / nchan [rounds] | "
             "ours / ours under hypercorn [rounds] | "
             + ("ours / floor, same server [rounds] | " if floors else "") + "goal |",
             "|---|---|---|---|---|" + ("---|" if floors else "") + "---|"]  # fmt: skip
    for e in entries:
        if not any(v is not None for v in e["values"]):
            continue  # a measure this run did not take
        unit = units.get(e["measure"], "µs/delivery")
        value = "-" if e["median_value"] is None else f"{e['median_value']:.3g} {unit}"
        to_nchan = _with_rounds(e["median_ratio"], e["ratios"])
        to_hypercorn = _with_rounds(e["median_ratio_to_hypercorn"], e["ratios_to_hypercorn"])
        to_floor = _with_rounds(e.get("median_ratio_to_floor"), e.get("ratios_to_floor", []))
        goal = ""
        if not e["target"].startswith("ours-"):
            to_hypercorn = to_floor = ""
            if e["target"] == "nchan":
                to_nchan = ""
        elif e["measure"] in GOALS:
            limit = GOALS[e["measure"]]
            if e["median_ratio"] is None:
                verdict = "not measured"
            else:
                verdict = "met" if e["median_ratio"] <= limit else "missed"
            goal = f"≤ {limit:g}x nchan: {verdict}"
        if e["target"].startswith("ours-") and e["measure"].startswith(("fanout-", "longpoll")):
            ratio = e["median_ratio_to_hypercorn"]
            if e["target"] != "ours-hypercorn" and ratio is not None:
                verdict = "met" if ratio <= 1.0 else "missed"
                goal = f"{goal}; " if goal else ""
                goal += f"≤ hypercorn: {verdict}"
        if e["target"] == "ours-hypercorn":
            to_hypercorn = "1"
        floor = f"{to_floor} | " if floors else ""
        lines.append(
            f"| {e['target']} | {e['measure']} | {value} | {to_nchan} | {to_hypercorn} | "
            f"{floor}{goal} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["publish"], ["connect"]):
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        raise_fd_limit()
        run = publish_load if argv[0] == "publish" else connect_load
        print(json.dumps(asyncio.run(run(json.loads(argv[1])))))
        return 0
    if argv[:1] == ["--report"]:  # the tables again, from a results file
        for name in argv[1:]:
            result = json.loads(Path(name).read_text())
            targets = list(dict.fromkeys(r["target"] for rows in result["rounds"] for r in rows))
            print(table(summarise(result["rounds"], targets)))
        return 0
    from bench import nchan

    parser = argparse.ArgumentParser(prog="python -m bench.requestpath", description=__doc__)
    parser.add_argument("--servers", default="hypercorn,uvicorn",
                        help=f"comma-separated, of {', '.join(SERVERS)}")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--fanout",
        default="sse,ws",
        help="stream transports to fan out to --fanout-subscribers too (sse, ws; '' for none)",
    )
    parser.add_argument("--fanout-subscribers", type=int, default=1000)
    parser.add_argument(
        "--sets",
        default="request,fanout",
        help="request (publish, connect, long-poll) and/or fanout (--fanout)",
    )
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument(
        "--warmup", type=float, default=1.0,
        help="seconds per phase of the unmeasured warm-up pass before the rounds (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false",
        help="leave out the floor (bench/floor.py) under each server",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s, 100 subscribers")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "requestpath.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.subscribers, args.connections = 1, 1.0, 100, 500
        args.warmup = min(args.warmup, 0.5)
        args.fanout_subscribers = 200
        global MIN_CPU_SECONDS
        MIN_CPU_SECONDS = 0.0
    args.nofile = raise_fd_limit()[0]
    args.fanout = [t for t in args.fanout.split(",") if t]
    args.sets = sorted(set(args.sets.split(",")))
    servers = [name for name in args.servers.split(",") if name]
    unknown = [name for name in servers if name not in SERVERS]
    if unknown or args.rounds < 1:
        parser.error(f"unknown server(s) {unknown} or --rounds below 1")
    targets = [f"{kind}-{name}" for name in servers for kind in ("ours", "floor")[: 1 + args.floor]]
    if nchan.available():
        targets.append("nchan")
    rounds: list[list[dict]] = []
    warmup: list[dict] = []
    if args.warmup:
        # One unmeasured pass of every load for every target, --warmup seconds per phase:
        # the first measured round then runs on a warm machine (page cache, nginx, the
        # interpreter's files), as the later ones do. Its figures are kept apart.
        warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
        for target in targets:
            row = measure(target, warm, 900 + len(warmup))
            print(json.dumps({"round": "warm-up", **figures(row), "target": target}),
                  flush=True)  # fmt: skip
            warmup.append(row)
    for number in range(args.rounds):
        order = targets[number % len(targets) :] + targets[: number % len(targets)]
        rows = []
        for target in order:
            row = measure(target, args, number * 10 + len(rows))
            print(json.dumps({"round": number + 1, **figures(row), "target": target}),
                  flush=True)  # fmt: skip
            rows.append(row)
        rounds.append(rows)
    entries = summarise(rounds, targets)
    print(table(entries))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items()},
        "warmup": warmup,
        "rounds": rounds,
        "summary": entries,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    failed = any(
        "error" in value or value.get("lost")
        for rows in rounds
        for row in rows
        for value in row.values()
        if isinstance(value, dict)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
