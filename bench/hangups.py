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

``python -m bench.hangups --flood 10000 --rounds 5`` measures the abandoned-channel flood
instead, with the server running: each round, ``--flood`` anonymous long polls on new
channels (``--concurrency`` at a time) that hang up at once, then a wait until the store's
``channel_timeout`` (here ``--channel-timeout``, 1 s) has removed every channel they made
(the status location's channel count); it prints the round's requests, seconds and the
server's RSS before and after. Flat after the first round: nothing is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def flood_round(port: int, count: int, concurrency: int, tag: str) -> None:
    limiter = asyncio.Semaphore(concurrency)

    async def one(k: int) -> None:
        async with limiter:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /sub/{tag}-{k} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 60)  # the server closes: the client left
            writer.close()

    await asyncio.gather(*(one(k) for k in range(count)))


async def store_channels(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status/json HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return json.loads(data.partition(b"\r\n\r\n")[2])["stores"]["default"]["channels"]


async def flood_rounds(pid: int, port: int, args: argparse.Namespace) -> None:
    for n in range(args.rounds):
        before = rss_bytes(pid)
        t0 = time.monotonic()
        await flood_round(port, args.flood, args.concurrency, f"f{n}-{time.time_ns()}")
        seconds = time.monotonic() - t0
        peak = rss_bytes(pid)
        deadline = time.monotonic() + args.channel_timeout + 60
        while (left := await store_channels(port)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # the server's sweeper: another process, bounded
        row = {
            "round": n,
            "requests": args.flood,
            "seconds": round(seconds, 2),
            "rss_before_kib": before // 1024,
            "rss_after_flood_kib": peak // 1024,
            "rss_after_expiry_kib": rss_bytes(pid) // 1024,
            "channels_left": left,
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hangups", description=__doc__)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--flood", type=int, default=0, help="see above; 0: the burst")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--channel-timeout", type=float, default=1.0)
    args = parser.parse_args()
    raise_fd_limit()
    extra = ("--channel-timeout", str(args.channel_timeout)) if args.flood else ()
    server = PythonServer("server.py", args.loop, extra=extra)
    try:
        if args.flood:
            asyncio.run(flood_rounds(server.pid, server.port, args))
            return
        for n in range(args.rounds):
            row = one_round(server.pid, server.port, args.connections, f"r{n}-{time.time_ns()}")
            print(json.dumps({"round": n, **row}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
