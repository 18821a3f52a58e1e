"""``runpushserver`` reloads on code changes under DEBUG, as ``runserver`` does; ``--noreload``
serves in the process itself. A real command in a child process, its status location
naming the pid that serves."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import httpx
import pytest

from pushserver.testing import PushServerProcess, free_port
from tests.project.helpers import ROOT, worker_pids

STATUS = {"locations": [{"type": "status", "prefix": "/status/"}]}


@pytest.fixture
def debug_settings(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A settings module of its own (the test project's, DEBUG on) in ``tmp_path``: the
    reloader watches it, and touching it changes no file of the repository."""
    module = tmp_path / "reload_settings.py"
    module.write_text("from tests.project.settings import *  # noqa: F403\n\nDEBUG = True\n")
    path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return module, {"PYTHONPATH": path}


def serving_pid(server: PushServerProcess) -> int:
    return httpx.get(server.url + "/status/", timeout=10).json()["pid"]


def touch(module: Path, text: str | None = None) -> None:
    """Change ``module`` (to ``text``, if given) with an mtime ahead of any the reloader
    has seen, whatever the file system's granularity."""
    seen = module.stat().st_mtime
    if text is not None:
        module.write_text(text)
    later = max(seen, module.stat().st_mtime) + 10
    os.utime(module, (later, later))


def change(server: PushServerProcess, module: Path, text: str | None = None) -> int:
    """Change ``module`` until the reloader says it saw it; the index of that line. The
    reloader's first look at the files may come after the banner, and a change before it
    is not one it can see: nothing tells when it has looked, so change again."""
    seen = len(server.output)
    deadline = time.monotonic() + 30
    while True:
        touch(module, text)
        try:
            server.wait_for_output(rf"{module.name} changed, reloading", 2, after=seen)
        except TimeoutError:
            assert time.monotonic() < deadline, server.log
            continue
        return seen


def test_reloads_by_default_under_debug(debug_settings):
    module, env = debug_settings
    server = PushServerProcess(
        "reload_settings",
        push_server=STATUS,
        address=f"127.0.0.1:{free_port()}",  # a reload binds the same port again
        env=env,
        cwd=str(ROOT),
        reload=None,  # neither --reload nor --noreload: as a developer starts it
    )
    with server:
        assert "Watching for file changes with" in server.log
        first = serving_pid(server)
        assert first != server.process.pid  # a child serves, the command watches
        seen = change(server, module)
        server.wait_for_output(r"running at http://", 30, after=seen)
        second = serving_pid(server)
        assert second not in (first, server.process.pid)
    assert server.process.returncode == 0


def test_a_check_error_waits_for_the_fix(debug_settings):
    """As runserver: a reload into a broken setting reports the check error (no traceback)
    and keeps watching; the fix brings the server back."""
    module, env = debug_settings
    good = module.read_text()
    with PushServerProcess(
        "reload_settings",
        push_server=STATUS,
        address=f"127.0.0.1:{free_port()}",
        env=env,
        cwd=str(ROOT),
        reload=True,
    ) as server:
        seen = change(server, module, good + 'PUSH_SERVER = {"port": "x"}\n')
        server.wait_for_output(r"pushserver\.E003", 30, after=seen)
        assert "Traceback" not in server.log
        seen = change(server, module, good)
        server.wait_for_output(r"running at http://", 30, after=seen)
        assert serving_pid(server) != server.process.pid


def test_noreload_serves_in_the_process_itself(debug_settings):
    _module, env = debug_settings
    with PushServerProcess(
        "reload_settings", push_server=STATUS, env=env, cwd=str(ROOT), reload=False
    ) as server:
        assert serving_pid(server) == server.process.pid
        assert "Watching for file changes" not in server.log


def test_reload_forced_without_debug_and_never_with_workers(redis_server):
    """--reload wins over DEBUG = False; --workers N keeps the supervisor in the main
    thread, so it does not reload."""
    with PushServerProcess(
        "tests.project.settings",
        push_server=STATUS,
        address=f"127.0.0.1:{free_port()}",
        cwd=str(ROOT),
        reload=True,
    ) as server:
        assert serving_pid(server) != server.process.pid
    with PushServerProcess(
        "tests.project.settings",
        push_server={**STATUS, "store": redis_server.store()},
        args=["--workers", "2"],
        cwd=str(ROOT),
        reload=True,
    ) as server:
        assert "2 workers" in server.log
        # No reloader process between: the workers are children of the command itself.
        pids = anyio.run(worker_pids, server, 2)
        parents = {int(Path(f"/proc/{pid}/stat").read_text().split()[3]) for pid in pids}
        assert parents == {server.process.pid}
