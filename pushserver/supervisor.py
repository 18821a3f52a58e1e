"""``runpushserver --workers N``: forked worker processes sharing the listening sockets.

:class:`Supervisor` forks the workers, each serving one of the sockets bound before (on
Linux one per worker on the same port, ``SO_REUSEPORT``, so the kernel spreads connections
evenly; elsewhere one shared socket), and keeps them running:

- SIGINT / SIGTERM stop it: it closes its own copies of the sockets at once (new
  connections go to no backlog nobody accepts) and passes SIGTERM on to every worker. A
  second signal kills them (SIGKILL), as does the alarm set :data:`KILL_AFTER` seconds past
  the workers' ``shutdown_timeout``.
- A worker that dies is replaced by a new one on the same socket, unless more than
  :data:`MAX_RESTARTS` died within :data:`RESTART_WINDOW` seconds: a crash loop, which stops
  every worker and raises :class:`CrashLoop`.

What a worker runs is the caller's: a function given the worker's socket, which serves until
a stop signal. The supervisor owns the process side: signals, forking, reaping, exit codes.
It uses POSIX signals and ``os.fork()``, and must run in the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger("pushserver")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: A worker dying more often than this within RESTART_WINDOW seconds is a crash loop: stop.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Seconds past the shutdown timeout after which the supervisor kills a worker that has not
#: exited (a worker normally exits within the timeout plus server.CLOSE_GRACE).
KILL_AFTER = 5.0


class CrashLoop(Exception):
    """Workers died too often (:data:`MAX_RESTARTS` within :data:`RESTART_WINDOW` s): the
    supervisor stopped them all. The message says which died and how."""


class Supervisor:
    """Runs ``workers`` forked processes, each calling ``serve(sock)``, until a stop signal
    (see the module docstring). :meth:`run` returns once every worker has exited."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        workers: int,
        serve: Callable[[socket.socket], None],
        *,
        shutdown_timeout: float,
        before_fork: Callable[[], None] = lambda: None,
    ) -> None:
        self.sockets = list(sockets)
        self.workers = workers
        #: What a worker runs: serve on its socket until SIGTERM / SIGINT, then return.
        self.serve = serve
        self.shutdown_timeout = shutdown_timeout
        #: Called once before the first fork: what a child must not share (Django's
        #: database connections) is closed here.
        self.before_fork = before_fork
        self.children: dict[int, int] = {}  # pid -> slot (which socket it serves)
        self.restarts: list[float] = []  # when workers died, within RESTART_WINDOW
        self.stopping = False
        self.failure: str | None = None

    def run(self) -> None:
        """Fork the workers, pass stop signals on, replace a worker that dies, and return
        once every worker has exited; :class:`CrashLoop` if they died too often."""
        self.before_fork()
        previous = {sig: signal.signal(sig, self.on_stop_signal) for sig in STOP_SIGNALS}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self.on_alarm)
        try:
            for slot in range(self.workers):
                self.spawn(slot)
            while self.children:
                pid, status = os.wait()
                slot = self.children.pop(pid, -1)  # -1: not a worker (slots count from 0)
                if slot < 0 or self.stopping:
                    continue
                self.worker_died(pid, status, slot)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failure is not None:
            raise CrashLoop(self.failure)

    # -- signals ---------------------------------------------------------------------------

    def signal_children(self, sig: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                os.kill(pid, sig)

    def on_stop_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            logger.warning("received %s again, killing the workers", name)
            self.signal_children(signal.SIGKILL)
            return
        self.stopping = True
        logger.info("received %s, stopping %d worker(s)", name, len(self.children))
        # The workers close their sockets as they stop; our copies would keep them
        # listening, and new connections would wait in a backlog nobody accepts.
        for sock in self.sockets:
            sock.close()
        self.signal_children(signal.SIGTERM)
        # The last resort for a worker that does not exit in time: SIGALRM kills it.
        signal.setitimer(signal.ITIMER_REAL, self.shutdown_timeout + KILL_AFTER)

    def on_alarm(self, signum: int, frame: object) -> None:
        if self.children:
            logger.warning(
                "%d worker(s) still running %gs after the stop signal: killing them",
                len(self.children),
                self.shutdown_timeout + KILL_AFTER,
            )
            self.signal_children(signal.SIGKILL)

    # -- workers ---------------------------------------------------------------------------

    def spawn(self, slot: int) -> None:
        # Stop signals wait until the child is known, so it cannot miss being told; the
        # child unblocks them once its own handlers are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                self.child(self.sockets[slot % len(self.sockets)])
            self.children[pid] = slot
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def worker_died(self, pid: int, status: int, slot: int) -> None:
        """Replace the worker, or stop them all if it is one death too many."""
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        now = time.monotonic()
        self.restarts[:] = [t for t in self.restarts if now - t < RESTART_WINDOW]
        if len(self.restarts) >= MAX_RESTARTS:
            self.stopping = True
            self.failure = (
                f"worker {pid} exited unexpectedly ({how}), the {len(self.restarts) + 1}th "
                f"worker to die within {RESTART_WINDOW:g} s: stopping the push server."
            )
            logger.error("%s", self.failure)
            self.signal_children(signal.SIGTERM)
            return
        self.restarts.append(now)
        logger.error("worker %d exited unexpectedly (%s); starting a new one", pid, how)
        self.spawn(slot)

    def child(self, sock: socket.socket) -> None:  # pragma: no cover - in forked children
        """A forked worker: serve on ``sock`` until a stop signal, then exit the process."""
        code = 1
        try:
            for sig in (*STOP_SIGNALS, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            for other in self.sockets:
                if other is not sock:
                    other.close()
            self.serve(sock)
            code = 0
        except KeyboardInterrupt:
            code = 0
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # Never return into the parent's copy of the caller (its cleanup, its atexit).
            os._exit(code)
