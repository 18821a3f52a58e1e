"""Connect cost in alternating rounds: ours from two source trees, nginx + nchan, and a
floor, each a fresh server per round (issue 14's connect goal; bench/NOTES.md, "The
request path: tuning passes").

    python bench/connectpairs.py ROUNDS TARGET[,TARGET...]

A target is ``nchan``, ``ours-<server>@<tree>`` (``<tree>/bench/server.py --asgi-server
<server>``: a clean export of main, or a worktree) or ``floor-<server>@<tree>``: an ASGI
app that holds every request until the client leaves (no routing, no channel, no answer)
under the same server as ours (pushserver's hypercorn worker, uvicorn as ``runpushserver
--server uvicorn`` runs it, or granian), from ``<tree>``'s pushserver. Servers run on CPU
0; the load is ``python -m bench.requestpath connect`` on CPU 1 (3,000 connects, ``N`` in
the environment to change). The order of the targets turns each round; the last lines are
each target's median and its per-round ratios to nchan. Run it under ``flock
/tmp/bench.lock``.

``python bench/connectpairs.py --floor <server> <tree>`` is the floor server itself.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def hold(scope, receive, send) -> None:
    """The floor: hold every HTTP request until its client leaves."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive())["type"] != "http.disconnect":
        pass


def floor_factory():
    """granian's factory for the floor, with the collector's thresholds ours runs with."""
    from pushserver.server import raise_gc_thresholds

    raise_gc_thresholds()
    return hold


def serve_floor(server: str, tree: str) -> None:
    import anyio

    from pushserver.server import bind, serve

    if server == "granian":
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        sock.close()
        print(f"LISTENING {port}", flush=True)
        command = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--backlog", "4096", "--loop", "uvloop",
            "--log-level", "warning", "--factory", "bench.connectpairs:floor_factory",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), tree])}
        os.execve(command[0], command, env)

    async def main() -> None:
        sock = bind("127.0.0.1", 0, backlog=4096)
        print(f"LISTENING {sock.getsockname()[1]}", flush=True)
        if server == "uvicorn":
            from pushserver.servers import serve_uvicorn

            config = types.SimpleNamespace(client_header_timeout=75)
            await serve_uvicorn(hold, sock, access_log=False, shutdown_timeout=1, config=config)
        else:
            await serve(hold, sock, access_log=False)  # type: ignore[arg-type]

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


class Server:
    def __init__(self, kind: str, server: str, tree: str) -> None:
        from bench import run
        from bench.requestpath import serving_child

        if kind == "ours":
            script = [f"{tree}/bench/server.py", "--loop", "uvloop", "--asgi-server", server]
        else:
            script = [str(Path(__file__).resolve()), "--floor", server, tree]
        self.process = subprocess.Popen(
            [*run.pinned(run.SERVER_CPU), sys.executable, *script],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": tree},
        )
        try:
            self.port = run.read_port(self.process, 30)
            self.pid = self.process.pid
            if server == "granian":  # its worker, a child process, serves
                self.pid = serving_child(self.process.pid, self.port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        from bench import run

        run.PythonServer.stop(self)  # type: ignore[arg-type]  # the same process handling


def one(target: str, seq: int, nofile: int, connections: int) -> dict:
    from bench import run

    if target == "nchan":
        server = run.NchanServer(run.free_port(), nofile)
    else:
        name, tree = target.split("@", 1)
        kind, asgi = name.split("-", 1)
        server = Server(kind, asgi, tree)
    try:
        spec = {"host": "127.0.0.1", "port": server.port, "server_pid": server.pid,
                "prefix": f"c{seq}", "connections": connections}  # fmt: skip
        done = subprocess.run(
            [*run.pinned(run.LOADGEN_CPU), sys.executable, "-m", "bench.requestpath",
             "connect", json.dumps(spec)],
            capture_output=True, text=True, timeout=180, cwd=ROOT,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--floor"]:
        serve_floor(argv[1], argv[2])
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.common import raise_fd_limit

    rounds, targets = int(argv[0]), argv[1].split(",")
    connections = int(os.environ.get("N", 3000))
    nofile = raise_fd_limit()[0]
    results: dict[str, list] = {t: [] for t in targets}
    for number in range(rounds):
        order = targets[number % len(targets) :] + targets[: number % len(targets)]
        for target in order:
            result = one(target, number * 10 + order.index(target), nofile, connections)
            failed = result.get("error") or result.get("connect_errors")
            results[target].append(None if failed else result.get("cpu_us_per_connect"))
            print(json.dumps({"round": number + 1, "target": target, **result}), flush=True)
    print("load average", Path("/proc/loadavg").read_text().split()[:3])
    base = results.get("nchan")
    for target in targets:
        values = results[target]
        known = [v for v in values if v]
        line = f"{target}: median {statistics.median(known):.1f} µs/connect {values}"
        if base and target != "nchan":
            ratios = [round(v / b, 2) for v, b in zip(values, base, strict=True) if v and b]
            line += f"; / nchan median {statistics.median(ratios):.2f}x {ratios}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
