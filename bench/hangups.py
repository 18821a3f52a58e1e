"""What connections that hang up before the server handles them cost it.

``python -m bench.hangups [--connections 3000] [--rounds 2]`` starts ``bench/server.py``
(memory store, ``create_on_get``), stops it with SIGSTOP, opens ``--connections`` connections
that each send a long poll on a new channel and hang up (FIN) — the kernel accepts them into
the listen backlog meanwhile — and lets the server go on (SIGCONT): it accepts them all
before it has handled any, the backlog a flood leaves when clients come faster than the
process serves them. It prints, per round, the server's RSS before, at its peak and after,
and its open file descriptors at the peak: RSS per connection open at once. Such
connections are not yet requests, so ``max_connections`` does not count them; each holds a
file descriptor, so the open-file limit does (docs/deployment.md#limits-and-nginx).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import raise_fd_limit, rss_bytes
from bench.run import PythonServer


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def hang_up_all(port: int, count: int, tag: str) -> list[socket.socket]:
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET /sub/{tag}-{i} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        sockets.append(sock)
    return sockets


def one_round(pid: int, port: int, count: int, tag: str) -> dict:
    before, fds_before = rss_bytes(pid), open_fds(pid)
    peak = {"rss": before, "fds": fds_before}
    done = threading.Event()

    def sample() -> None:  # the peak, read from /proc while the server works through them
        while not done.is_set():
            try:
                peak["rss"] = max(peak["rss"], rss_bytes(pid))
                peak["fds"] = max(peak["fds"], open_fds(pid))
            except (OSError, RuntimeError):
                pass
            done.wait(0.002)

    os.kill(pid, signal.SIGSTOP)
    try:
        sockets = hang_up_all(port, count, tag)
    finally:
        os.kill(pid, signal.SIGCONT)
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    for sock in sockets:  # the server answers a long poll whose client left by closing
        sock.settimeout(60)
        while sock.recv(65536):
            pass
        sock.close()
    seconds = time.monotonic() - t0
    done.set()
    sampler.join()
    opened = peak["fds"] - fds_before
    # Every client has its EOF; the server's sockets may take a moment more to close.
    settle = time.monotonic()
    while open_fds(pid) > fds_before + 5 and time.monotonic() - settle < 30:
        time.sleep(0.05)  # polling another process's state, bounded
    return {
        "connections": count,
        "seconds": round(seconds, 2),
        "rss_before_kib": before // 1024,
        "rss_peak_kib": peak["rss"] // 1024,
        "rss_after_kib": rss_bytes(pid) // 1024,
        "fds_before": fds_before,
        "fds_peak": peak["fds"],
        "fds_after": open_fds(pid),
        "fds_settled_seconds": round(time.monotonic() - settle, 2),
        "kib_per_open_connection": round((peak["rss"] - before) / 1024 / max(1, opened), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hangups", description=__doc__)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    raise_fd_limit()
    server = PythonServer("server.py", args.loop)
    try:
        for n in range(args.rounds):
            row = one_round(server.pid, server.port, args.connections, f"r{n}-{time.time_ns()}")
            print(json.dumps({"round": n, **row}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
