"""The load generator: one asyncio process (uvloop when available), run on the other core.

``python bench/loadgen.py '<json spec>'`` connects the subscribers, measures the server's
idle memory, publishes, counts deliveries, and prints one JSON result line. It reads the
server's CPU time and memory from /proc itself, so the numbers bracket exactly the phase
it drives.

With several servers (``ports`` / ``server_pids``: processes sharing one Redis) subscriber
*i* connects to server *i* mod *n*, publishers take turns over the servers, and CPU time and
memory are summed over the server processes; the Redis processes' CPU (``redis_pids``, a
cluster's every node, or the one ``redis_pid``) is summed and reported on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import SUBSCRIBERS, Publisher, Stats
from bench.common import CLOCK_TICKS, cpu_seconds, cpu_split, raise_fd_limit, rss_bytes
from bench.instructions import Instructions
from bench.redisserver import CommandStats, commands_sent

#: Publishes to a channel nobody subscribes to, on Redis rows: a publish's own commands.
PUBLISH_SAMPLE = 50


def percentile(sorted_values, fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index] / 1e6  # ns -> ms


def syscalls(pids: list[int]) -> tuple[int, int]:
    """Read-like and write-like system calls the processes made so far (/proc/<pid>/io's
    syscr and syscw: read/readv/recvfrom and write/writev/sendto count, epoll_wait does not)."""
    reads = writes = 0
    for pid in pids:
        with open(f"/proc/{pid}/io", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        reads += int(fields[b"syscr"])
        writes += int(fields[b"syscw"])
    return reads, writes


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def wait_quiet(pids: list[int], timeout: float, interval: float = 0.1) -> bool:
    """Wait until each process uses under one clock tick per interval (all caught up)."""
    deadline = time.monotonic() + timeout
    before = [cpu_seconds(pid) for pid in pids]
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)  # sampling the servers' CPU clocks, not synchronising
        after = [cpu_seconds(pid) for pid in pids]
        if all(a - b < 1.5 / CLOCK_TICKS for a, b in zip(after, before, strict=True)):
            return True
        before = after
    return False


async def wait_for(stats: Stats, done, timeout: float) -> bool:
    """Wait until ``done()`` holds, woken by each delivery; False on timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        stats.progress.clear()
        try:
            await asyncio.wait_for(stats.progress.wait(), left)
        except TimeoutError:
            return done()
    return True


async def run(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    host = spec["host"]
    ports = spec.get("ports") or [spec["port"]]
    pids = spec.get("server_pids") or [spec["server_pid"]]
    # One Redis, or a cluster's primaries (``redis_pids``): their CPU is summed.
    redis_pids = spec.get("redis_pids") or ([spec["redis_pid"]] if spec.get("redis_pid") else [])
    # Quiet means every server *and* Redis has caught up.
    watched = pids + redis_pids
    n, channels = spec["subscribers"], spec["channels"]
    size = spec.get("message_size", 64)
    result: dict = {"fd_limit": raise_fd_limit()}
    stats = Stats()
    stats.address = (host, ports[0])
    cls = SUBSCRIBERS[spec["transport"]]
    paths = [f"/sub/{spec['prefix']}-{c}".encode() for c in range(channels)]
    pub_paths = [f"/pub/{spec['prefix']}-{c}".encode() for c in range(channels)]
    hostnames = [f"{host}:{port}".encode() for port in ports]

    # -- connect ---------------------------------------------------------------------------
    await wait_quiet(watched, 5)
    rss_fresh = sum(rss_bytes(pid) for pid in pids)
    subscribers = []
    gate = asyncio.Semaphore(spec.get("connect_concurrency", 32))
    connect_errors: dict[str, int] = {}

    def subscriber(i: int):
        sub = cls(stats, hostnames[i % len(ports)], paths[i % channels])
        sub.address = (host, ports[i % len(ports)])
        return sub

    async def connect(i: int) -> None:
        async with gate:
            try:
                _, sub = await asyncio.wait_for(
                    loop.create_connection(lambda: subscriber(i), host, ports[i % len(ports)]),
                    spec.get("connect_timeout", 30),
                )
            except (OSError, TimeoutError) as exc:
                key = type(exc).__name__ + (
                    f" errno {exc.errno}" if getattr(exc, "errno", None) else ""
                )
                connect_errors[key] = connect_errors.get(key, 0) + 1
                return
            sub.channel = i % channels
            sub.server = i % len(ports)
            subscribers.append(sub)
            try:
                await asyncio.wait_for(
                    asyncio.shield(sub.connected), spec.get("connect_timeout", 30)
                )
            except TimeoutError:
                stats.error("no response to subscribe")

    started = time.monotonic()
    cpu_connect = total_cpu(pids)
    redis_connect = total_cpu(redis_pids) if redis_pids else 0.0
    await asyncio.gather(*(connect(i) for i in range(n)))
    live = [s for s in subscribers if s.connected.done() and s.connected.result()]
    result["connect_seconds"] = round(time.monotonic() - started, 2)
    result["connected"] = len(live)
    result["connect_errors"] = connect_errors
    await wait_quiet(watched, 10)
    result["server_cpu_ms_per_connect"] = round((total_cpu(pids) - cpu_connect) * 1e3 / n, 3)
    if redis_pids:
        result["redis_cpu_ms_per_connect"] = round(
            (total_cpu(redis_pids) - redis_connect) * 1e3 / n, 3
        )
    if len(ports) > 1:
        result["connected_per_server"] = [
            sum(1 for s in live if s.server == k) for k in range(len(ports))
        ]
    rss_idle = sum(rss_bytes(pid) for pid in pids)
    result["rss_fresh_bytes"] = rss_fresh
    result["rss_idle_bytes"] = rss_idle
    result["memory_per_idle_connection_bytes"] = (
        round((rss_idle - rss_fresh) / len(live)) if live else None
    )
    if not live:
        result["error"] = "no subscriber connected"
        return result
    expected = {c: 0 for c in range(channels)}
    for s in live:
        expected[s.channel] += 1
    subscribed_channels = [c for c in range(channels) if expected[c]]

    publishers = []

    async def new_publisher(k: int) -> Publisher:
        _, pub = await loop.create_connection(lambda: Publisher(hostnames[k]), host, ports[k])
        pub.server = k
        publishers.append(pub)
        return pub

    # At least one publisher per server: the pool (FIFO) then takes turns over the servers.
    count = max(min(spec.get("publishers", 8), len(subscribed_channels)), len(ports))
    for k in range(count):
        await new_publisher(k % len(ports))
    pool: asyncio.Queue[Publisher] = asyncio.Queue()
    for pub in publishers:
        pool.put_nowait(pub)
    published = dict.fromkeys(range(channels), 0)
    publish_status: dict[int, int] = {}

    # One publish at a time per channel, in sequence order (asyncio locks are FIFO): two
    # concurrent POSTs to one channel may reach the server in either order.
    locks = [asyncio.Lock() for _ in range(channels)]

    async def publish(c: int, seq: int) -> None:
        async with locks[c]:
            pub = await pool.get()
            if pub.dead:
                pub.transport.close()
                pub = await new_publisher(pub.server)
                stats.reconnects += 1
            try:
                status = await pub.post(pub_paths[c], seq, size)
                publish_status[status] = publish_status.get(status, 0) + 1
                if seq:
                    published[c] = max(published[c], seq)
            finally:
                pool.put_nowait(pub)

    async def publish_round(seq: int) -> None:
        await asyncio.gather(*(publish(c, seq) for c in subscribed_channels))

    # -- warm up: message 0 to every channel proves every subscriber is held ----------------
    await publish_round(0)
    warm = await wait_for(
        stats, lambda: stats.round_count.get(0, 0) >= len(live), spec.get("drain", 20)
    )
    result["warmup_complete"] = warm
    result["warmup_missing"] = len(live) - stats.round_count.get(0, 0)
    await wait_quiet(watched, 5)

    # -- Redis commands per publish, apart from the subscribers' -----------------------------
    commands = CommandStats(spec["redis_urls"]) if spec.get("redis_urls") else None
    if commands is not None:
        commands.reset()
        pub = await pool.get()
        alone = f"/pub/{spec['prefix']}-alone".encode()
        for k in range(PUBLISH_SAMPLE):
            await pub.post(alone, k, size)
        pool.put_nowait(pub)
        await wait_quiet(watched, 5)
        per_publish = commands_sent(commands.read()) / PUBLISH_SAMPLE
        commands.reset()  # the measured phase's own count starts here

    # -- measured phase --------------------------------------------------------------------
    duration = spec["duration"]
    # A fixed number of rounds instead of a duration (bench/instructions.py: a server under
    # callgrind runs fifty times slower, and counts, not seconds, are compared).
    fixed_rounds = spec.get("rounds")
    counted = Instructions(pids) if spec.get("callgrind") else None
    if counted is not None:
        counted.zero()
    io_before = syscalls(pids)
    split_before = [cpu_split(pid) for pid in pids]  # (user, system) per server
    redis_before = total_cpu(redis_pids) if redis_pids else 0.0
    own_before = os.times()
    sleeps_before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    t0 = time.monotonic()
    rounds = 0
    if spec["mode"] == "throughput":
        # Closed loop: round r (message r to every channel) starts once round r - window is
        # fully delivered, so the server always has work and never an unbounded backlog.
        window = spec.get("window", 2)
        pending: set[asyncio.Task] = set()
        for seq in itertools.count(1):
            over = seq > fixed_rounds if fixed_rounds else time.monotonic() - t0 >= duration
            if over:
                break
            if seq > window:
                ok = await wait_for(
                    stats,
                    lambda s=seq - window: stats.round_count.get(s, 0) >= len(live),
                    spec.get("drain", 20),
                )
                if not ok:
                    stats.error(f"round {seq - window} not fully delivered in {spec['drain']} s")
                    break
            task = asyncio.create_task(publish_round(seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
            rounds = seq
        if pending:
            await asyncio.gather(*pending)
    else:
        # Open loop at a fixed rate, one channel after another.
        rate = spec["rate"]
        tasks = []
        order = itertools.cycle(subscribed_channels)
        seqs = dict.fromkeys(range(channels), 0)
        for k in itertools.count():
            due = t0 + k / rate
            if due - t0 >= duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the publish schedule itself
            c = next(order)
            seqs[c] += 1
            tasks.append(asyncio.create_task(publish(c, seqs[c])))
            rounds = k + 1
        await asyncio.gather(*tasks)
    publish_seconds = time.monotonic() - t0
    total_expected = sum(published[c] * expected[c] for c in range(channels))
    drained = await wait_for(
        stats, lambda: stats.deliveries >= total_expected, spec.get("drain", 20)
    )
    own_after = os.times()
    sleeps_after = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    wall = (stats.last_delivery or time.monotonic()) - t0
    # re-polls and acks after the last delivery are part of the cost
    await wait_quiet(watched, 3)
    split_after = [cpu_split(pid) for pid in pids]
    io_after = syscalls(pids)
    server_system = sum(a[1] - b[1] for a, b in zip(split_after, split_before, strict=True))
    instructions = counted.read() if counted is not None else None
    redis_cpu = total_cpu(redis_pids) - redis_before if redis_pids else None
    own_cpu = (own_after.user + own_after.system) - (own_before.user + own_before.system)

    lat = sorted(stats.latencies)
    server_cpu_each = [sum(a) - sum(b) for a, b in zip(split_after, split_before, strict=True)]
    server_cpu = sum(server_cpu_each)
    result.update(
        publishes=sum(published.values()),
        publish_rounds=rounds,
        publish_seconds=round(publish_seconds, 3),
        publishes_per_second=round(sum(published.values()) / publish_seconds, 1),
        publish_status=publish_status,
        drained=drained,
        expected_deliveries=total_expected,
        deliveries=stats.deliveries,
        deliveries_per_second=round(stats.deliveries / wall) if wall > 0 else None,
        server_cpu_seconds=round(server_cpu, 3),
        # The kernel's share (system time) of the server's CPU time over the phase.
        server_system_seconds=round(server_system, 3),
        cpu_us_per_delivery=round(server_cpu * 1e6 / stats.deliveries, 2)
        if stats.deliveries
        else None,
        server_cpu_utilisation=round(server_cpu / wall, 3) if wall > 0 else None,
        server_read_syscalls=io_after[0] - io_before[0],
        server_write_syscalls=io_after[1] - io_before[1],
        server_processes=len(pids),
        server_cpu_seconds_each=[round(c, 3) for c in server_cpu_each],
        loadgen_cpu_seconds=round(own_cpu, 3),
        # Times the load generator slept (voluntary context switches): on loopback a
        # server's write that wakes it would pay for the wake-up in its system time.
        loadgen_sleeps=sleeps_after - sleeps_before,
        loadgen_cpu_utilisation=round(own_cpu / wall, 3) if wall > 0 else None,
        latency_ms_p50=percentile(lat, 0.50),
        latency_ms_p99=percentile(lat, 0.99),
        latency_ms_max=lat[-1] / 1e6 if lat else None,
        lost=max(0, total_expected - stats.deliveries),
        duplicated=stats.duplicates,
        out_of_order=stats.out_of_order,
        errors=stats.errors,
        reconnects=stats.reconnects,
        control_frames=stats.controls,
        anomalies=stats.anomalies,
    )
    if instructions is not None:
        # callgrind's events over the phase (Ir: instructions; with its cache simulation
        # also the first-level and last-level cache misses), in all and per delivery.
        result["server_events"] = instructions
        result["events_per_delivery"] = (
            {k: round(v / stats.deliveries, 1) for k, v in instructions.items()}
            if stats.deliveries
            else None
        )
        result["instructions_per_delivery"] = (
            round(instructions["Ir"] / stats.deliveries) if stats.deliveries else None
        )
    if redis_cpu is not None:
        result.update(
            redis_cpu_seconds=round(redis_cpu, 3),
            redis_cpu_us_per_delivery=round(redis_cpu * 1e6 / stats.deliveries, 2)
            if stats.deliveries
            else None,
            redis_cpu_utilisation=round(redis_cpu / wall, 3) if wall > 0 else None,
        )
    if commands is not None:
        # Redis's own count (INFO commandstats) over the measured phase: what the servers
        # sent it, the publishes' share taken out at the sampled rate for the deliveries'.
        calls = commands.read()
        commands.close()
        sent = commands_sent(calls)
        publishes = sum(published.values())
        result.update(
            redis_commandstats=calls,
            redis_commands=sent,
            redis_commands_per_publish=round(per_publish, 2),
            # Not below 0: the sampled rate may include a background command (INFO).
            redis_commands_per_delivery=max(
                0.0, round((sent - per_publish * publishes) / stats.deliveries, 2)
            )
            if stats.deliveries
            else None,
        )
    for sub in subscribers:
        sub.close()
    for pub in publishers:
        pub.transport.close()
    await asyncio.sleep(0)
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None and spec.get("loop", "uvloop") == "uvloop":
        result = uvloop.run(run(spec))
        result["loadgen_loop"] = "uvloop"
    else:
        result = asyncio.run(run(spec))
        result["loadgen_loop"] = "asyncio"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
