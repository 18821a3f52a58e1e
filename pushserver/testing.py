"""Helpers for testing a project against a real push server.

:class:`PushServerProcess` runs ``manage.py runpushserver`` in a subprocess on a free
loopback port and stops it, so tests speak real HTTP to the real command::

    with PushServerProcess(settings_module="mysite.settings") as server:
        httpx.get(server.url + "/subscriber/news")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

_RUNNING_RE = re.compile(r"running at (http://(\S+?))/\s*$")


class PushServerProcess:
    """``runpushserver`` in a child process; ``url`` is its base URL once started.

    ``push_server`` is handed to the child as JSON in ``PUSHSERVER_TEST_CONFIG`` (a test
    settings module can read it into ``PUSH_SERVER``); ``args`` are extra command arguments.
    """

    def __init__(
        self,
        settings_module: str,
        *,
        push_server: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        address: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.settings_module = settings_module
        self.push_server = push_server
        self.args = list(args)
        self.address = address
        self.env = dict(env or {})
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = ""
        self.output: list[str] = []
        self._output_changed = threading.Condition()
        self._drainer: threading.Thread | None = None

    def start(self) -> PushServerProcess:
        env = {**os.environ, **self.env, "DJANGO_SETTINGS_MODULE": self.settings_module}
        env["PYTHONUNBUFFERED"] = "1"
        if self.push_server is not None:
            env["PUSHSERVER_TEST_CONFIG"] = json.dumps(self.push_server)
        command = [sys.executable, "-m", "django", "runpushserver", self.address, *self.args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.cwd,
        )
        # One thread reads the child's output from the start (so the pipe never fills) and
        # wakes waiters per line; selecting on the pipe would miss lines already buffered.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        try:
            match = self.wait_for_output(_RUNNING_RE.pattern, timeout=self.startup_timeout)
        except TimeoutError:
            if self._drainer is not None and not self._drainer.is_alive():
                # Its output ended: it is exiting, maybe not yet reaped; don't race that.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(10)
            exited = self.process.poll() is not None
            self.stop()
            if exited:
                raise RuntimeError(
                    f"runpushserver exited with {self.process.returncode}:\n{self.log}"
                ) from None
            raise TimeoutError(f"runpushserver did not start:\n{self.log}") from None
        self.url, self.host = match.group(1), match.group(2)
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._output_changed:
                self.output.append(line)
                self._output_changed.notify_all()
        with self._output_changed:
            self._output_changed.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Block until a line of the server's output matches the regex ``pattern``.

        Raises :class:`TimeoutError` (with the output so far) when none does in time or the
        server exits first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._output_changed:
            while True:
                for line in self.output[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.output)
                remaining = deadline - time.monotonic()
                exited = self._drainer is None or not self._drainer.is_alive()
                if remaining <= 0 or exited:
                    raise TimeoutError(f"no output line matched {pattern!r}:\n{self.log}")
                self._output_changed.wait(remaining)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the server (SIGTERM by default) and wait for it to exit."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drainer is not None:
            self._drainer.join(timeout)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)

    def __enter__(self) -> PushServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
