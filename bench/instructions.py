"""Instructions per delivery: the fan-out's cost in counts, not seconds.

``python -m bench.instructions --servers hypercorn,uvicorn --transports sse,ws`` serves
ours (bench/server.py) under each server inside valgrind's callgrind, connects the
subscribers (bench/loadgen.py), zeroes callgrind's counters, publishes a fixed number of
rounds to all of them, then dumps the counters: the server's user-space instructions over
exactly the measured phase, per delivery. The same run counts the server's read- and
write-like system calls per delivery (/proc/<pid>/io) in a run of the same load without
valgrind, and the kernel's share of that run's CPU time: the kernel's part of a delivery.

Why beside the timed bench: CPU seconds on this shared two-core machine vary by 20 % or
more from one round to the next, so two servers within a few per cent of each other cannot
be told apart by timing. An instruction count is the same for the same program and input
whatever else the machine does (callgrind counts the instructions the process executes,
not the time they take). It leaves out what instructions do not show, cache misses and the
kernel's time, which is why the system calls are counted beside them.

Valgrind runs the server about fifty times slower, so the loads are smaller than the timed
bench's (``--subscribers``, ``--rounds``); timing-dependent batching differs from a real
run, and the counts vary by a few per cent between repeats (``--repeat``: every figure is
given per repeat). The servers send no keepalive (``ping_interval`` 0): a sweep of pings to
every subscriber inside a phase this slow would be counted per delivery. Needs
``valgrind`` (Debian's package) on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Where the servers under callgrind write their dumps: the loadgen reads them (spec
#: ``callgrind``), the driver below sets it for both.
DUMPS = "BENCH_CALLGRIND_DIR"


class Instructions:
    """Callgrind's counters (``Ir``: instructions) of processes running under callgrind
    with ``--callgrind-out-file=$BENCH_CALLGRIND_DIR/callgrind.out.%p``: :meth:`zero`
    before a phase, :meth:`read` after it (a dump, whose summary is the phase's count)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.directory = Path(os.environ[DUMPS])

    def _control(self, pid: int, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=60
        )

    def zero(self) -> None:
        for pid in self.pids:
            self._control(pid, "--zero")

    def read(self) -> dict[str, int]:
        """The events counted since :meth:`zero`, summed over the processes: ``Ir``
        (instructions), and the cache simulation's misses where it runs."""
        totals: dict[str, int] = {}
        for pid in self.pids:
            before = set(self.directory.glob(f"callgrind.out.{pid}.*"))
            self._control(pid, "--dump")
            (dump,) = set(self.directory.glob(f"callgrind.out.{pid}.*")) - before
            names: list[str] = []
            for line in dump.read_text().splitlines():
                if line.startswith("events:"):
                    names = line.split()[1:]
                elif line.startswith("summary:"):
                    # The events since the zero. (The dump's "totals:" line reads higher
                    # by what calls still under way at the dump add again: 30 % here.)
                    for name, value in zip(names, line.split()[1:], strict=True):
                        totals[name] = totals.get(name, 0) + int(value)
                    break
            else:
                raise RuntimeError(f"no summary in {dump}")
        return totals


def _spec(target, transport: str, args: argparse.Namespace, seq: int, counted: bool) -> dict:
    """bench/requestpath.py's fan-out load, for a fixed number of rounds."""
    from bench.requestpath import fanout_spec

    longpoll = transport == "longpoll"
    subscribers = args.longpoll_subscribers if longpoll else args.subscribers
    return {
        **fanout_spec(target, transport, subscribers, f"i{seq}", args),
        "rounds": args.longpoll_rounds if longpoll else args.rounds,
        "callgrind": counted,
        "drain": 600,
        "connect_timeout": 600,
    }


def measure(server: str, transport: str, args: argparse.Namespace, seq: int) -> dict:
    """One server and transport: the instructions under callgrind, then the system calls
    of the same load without it (valgrind makes read and write calls of its own)."""
    from bench import run
    from bench.requestpath import load

    wrapper = (
        "valgrind", "--tool=callgrind", "--quiet",
        f"--callgrind-out-file={os.environ[DUMPS]}/callgrind.out.%p",
        # One CCX's L3 of the AMD EPYC this ran on (32 MiB, 16-way): left to itself
        # callgrind simulates the host's whole L3 as one cache, which nothing misses.
        *(("--cache-sim=yes", "--LL=33554432,16,64") if args.cache_sim else ()),
    )  # fmt: skip
    row: dict = {"server": server, "transport": transport, "repeat": seq}
    for counted in (True, False):
        target = run.PythonServer(
            "server.py", args.loop, extra=("--asgi-server", server, "--ping-interval", "0"),
            wrapper=wrapper if counted else (), start=600,
        )  # fmt: skip
        try:
            result = load(
                [str(ROOT / "bench" / "loadgen.py")],
                _spec(target, transport, args, seq, counted),
                3600,
            )
        finally:
            target.stop()
        if "error" in result:
            return {**row, "error": result["error"]}
        deliveries = result["deliveries"]
        row["deliveries"] = deliveries
        row[f"{'counted' if counted else 'plain'}_lost"] = result["lost"] + result["duplicated"]
        row[f"{'counted' if counted else 'plain'}_out_of_order"] = result["out_of_order"]
        if counted:
            row["instructions_per_delivery"] = result["instructions_per_delivery"]
            events = result["events_per_delivery"]
            if "DLmr" in events:  # the cache simulation's last-level misses, per delivery
                row["d1_misses_per_delivery"] = round(events["D1mr"] + events["D1mw"], 1)
                row["ll_misses_per_delivery"] = round(
                    events["ILmr"] + events["DLmr"] + events["DLmw"], 1
                )
        else:
            for kind in ("read", "write"):
                row[f"{kind}_syscalls_per_delivery"] = round(
                    result[f"server_{kind}_syscalls"] / deliveries, 3
                )
            row["system_share"] = (
                round(result["server_system_seconds"] / result["server_cpu_seconds"], 2)
                if result["server_cpu_seconds"]
                else None
            )
    return row


def table(rows: list[dict], servers: list[str]) -> str:
    """Per transport and server: instructions per delivery per repeat, their ratio to the
    first server's in the same repeat, and system calls per delivery."""
    base = servers[0]
    misses = any("ll_misses_per_delivery" in r for r in rows)
    out = [
        "| server | transport | instructions / delivery [repeats] | / "
        f"{base} [repeats] | reads / delivery | writes / delivery | system share |"
        + (" D1 / LL misses per delivery |" if misses else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if misses else ""),
    ]
    keyed = {(r["server"], r["transport"], r["repeat"]): r for r in rows if "error" not in r}
    for transport in dict.fromkeys(r["transport"] for r in rows if "error" not in r):
        for server in servers:
            mine = [
                r for r in rows if r.get("server") == server and r.get("transport") == transport
            ]
            if not mine:
                continue
            counts = [r["instructions_per_delivery"] for r in mine]
            ratios = []
            for r in mine:
                other = keyed.get((base, transport, r["repeat"]))
                if other and other["instructions_per_delivery"]:
                    ratio = r["instructions_per_delivery"] / other["instructions_per_delivery"]
                    ratios.append(round(ratio, 3))
            reads = sorted({r["read_syscalls_per_delivery"] for r in mine})
            writes = sorted({r["write_syscalls_per_delivery"] for r in mine})
            shares = [r["system_share"] for r in mine]
            out.append(
                f"| {server} | {transport} | {', '.join(f'{c:,}' for c in counts)} | "
                f"{', '.join(f'{x:.3f}x' for x in ratios)} | "
                f"{', '.join(map(str, reads))} | {', '.join(map(str, writes))} | "
                f"{', '.join(map(str, shares))} |"
                + (
                    " "
                    + ", ".join(
                        f"{r.get('d1_misses_per_delivery')} / {r.get('ll_misses_per_delivery')}"
                        for r in mine
                    )
                    + " |"
                    if misses
                    else ""
                )
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="hypercorn,uvicorn")
    parser.add_argument("--transports", default="sse,ws,longpoll")
    # As the timed fan-out (bench/requestpath.py): 1,000 stream and 500 long-poll
    # subscribers; fewer rounds, the server running some fifty times slower.
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--longpoll-subscribers", type=int, default=500)
    parser.add_argument("--longpoll-rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    # bench/requestpath.py's fan-out spec reads a duration: unused, the rounds are fixed.
    parser.set_defaults(duration=0)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="callgrind's cache simulation too: data misses per delivery (slower)",
    )
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("bench.instructions needs valgrind (apt-get install valgrind)")
    servers = [s for s in args.servers.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as directory:
        os.environ[DUMPS] = directory
        for seq in range(args.repeat):
            # Alternating: each repeat runs every server once, transport by transport.
            for transport in [t for t in args.transports.split(",") if t]:
                for server in servers:
                    row = measure(server, transport, args, seq)
                    row.setdefault("server", server)
                    row.setdefault("transport", transport)
                    row.setdefault("repeat", seq)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(table(rows, servers))


if __name__ == "__main__":
    main()
