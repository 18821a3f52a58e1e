"""docs/tutorial.md, followed as written by a newcomer: in an empty directory, a new virtual
environment that installs pushserver from this checkout, ``django-admin startproject``, the
tutorial's files, its commands in order, its two servers, then the page and a headline
published with ``./manage.py shell`` arriving at a long-poll client.

Each code block the test acts on is marked by an HTML comment just before it:
``<!-- tutorial: run -->`` (shell commands, run in order in one shell),
``<!-- tutorial: file PATH -->`` (the whole file), ``<!-- tutorial: append PATH -->`` (lines
added at its end), ``<!-- tutorial: servers -->`` (one long-running command a line) and
``<!-- tutorial: publish -->``. The only changes made to what the page says: the checkout's
path for ``/path/to/pushserver`` and free ports for 8000 and 8001 (the machine is shared).

It needs the package index (pip installs Django and the other dependencies, from its cache
when it can) and takes a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from pushserver.testing import free_port
from tests.project.helpers import wait_for_subscribers

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
STEP = re.compile(r"<!-- tutorial: (\w+)(?: (\S+))? -->\n```[\w+-]*\n(.*?)```", re.DOTALL)


def steps() -> list[tuple[str, str | None, str]]:
    """(kind, path, text) of each marked block, in the page's order."""
    return [match.groups() for match in STEP.finditer(TUTORIAL.read_text())]


class Background:
    """A long-running command of the tutorial, its output in a file."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.log_path = log
        self.output = log.open("w")
        # exec: the pid is the server's own, and it is what gets the stop signal.
        self.process = subprocess.Popen(
            ["bash", "-c", f"source .venv/bin/activate && exec {command}"],
            cwd=cwd,
            env=env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while re.search(pattern, self.log) is None:
            assert self.process.poll() is None, f"{self.command} exited:\n{self.log}"
            assert time.monotonic() < deadline, f"{self.command}: no {pattern!r}:\n{self.log}"
            time.sleep(0.05)  # the poll interval on another process's output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


def test_the_tutorial_is_marked_up():
    kinds = [kind for kind, _, _ in steps()]
    assert kinds.count("servers") == 1 and kinds.count("publish") == 1
    assert kinds.index("servers") < kinds.index("publish")
    written = {path for kind, path, _ in steps() if kind in ("file", "append")}
    assert {
        "mysite/settings.py",
        "mysite/urls.py",
        "live/views.py",
        "live/apps.py",
        "live/signals.py",
        "live/templates/live/index.html",
    } <= written


@pytest.mark.anyio
async def test_the_tutorial_works_as_written(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("the tutorial's commands are for a POSIX shell")
    django_port, push_port = free_port(), free_port()

    def as_here(text: str) -> str:
        return (
            text.replace("/path/to/pushserver", str(ROOT))
            .replace("127.0.0.1:8000", f"127.0.0.1:{django_port}")
            .replace("127.0.0.1:8001", f"127.0.0.1:{push_port}")
        )

    project = tmp_path / "tutorial"
    project.mkdir()
    # A newcomer's shell: python3 is the interpreter running this test, no venv active,
    # no settings module or Python path of ours.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys._base_executable)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "DJANGO_SETTINGS_MODULE", "PYTHONHOME")
        and not key.startswith("PUSHSERVER_")
    }
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # the receivers' prints reach the log as they happen
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def shell(commands: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["bash", "-e", "-c", commands],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{commands}\n{result.stdout}"
        return result.stdout

    servers: list[str] = []
    publish = ""
    activate = ""  # after the first block the reader's terminal has the venv active
    for kind, path, text in steps():
        text = as_here(text)
        if kind == "run":
            shell(activate + text)
            activate = "source .venv/bin/activate\n"
        elif kind == "file":
            target = project / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        elif kind == "append":
            target = project / path
            assert target.exists(), f"{path} should exist by now (startproject writes it)"
            target.write_text(target.read_text() + "\n" + text)
        elif kind == "servers":
            servers = [line for line in text.splitlines() if line.strip()]
        elif kind == "publish":
            publish = text
        else:
            pytest.fail(f"unknown tutorial step {kind!r}")
    check = shell(activate + "python manage.py check")
    assert "no issues" in check, check  # nor the first-use warnings: the hosts are set

    started = [
        Background(command, project, env, tmp_path / f"server{i}.log")
        for i, command in enumerate(servers)
    ]
    try:
        django, push = started
        django.wait_for(rf"Starting .*development server at http://127\.0\.0\.1:{django_port}/")
        push.wait_for(rf"running at http://127\.0\.0\.1:{push_port}/")
        django_url = f"http://127.0.0.1:{django_port}"
        async with httpx.AsyncClient(timeout=30) as client:
            page = (await client.get(f"{django_url}/")).text
            subscribe = re.search(r"'news': '([^']+)'", page)
            assert subscribe, page
            channel_url = subscribe.group(1).encode().decode("unicode_escape")
            assert channel_url == f"http://127.0.0.1:{push_port}/updates/news"
            script = re.search(r'<script src="([^"]+)" data-pushserver-transport="longpoll">', page)
            assert script, page
            client_js = await client.get(django_url + script.group(1))
            assert client_js.status_code == 200 and "$.updates" in client_js.text

            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{push_port}", timeout=30
            ) as push_client:
                received: list[httpx.Response] = []

                async def long_poll() -> None:
                    received.append(
                        await push_client.get("/updates/news", headers={"origin": django_url})
                    )

                async with anyio.create_task_group() as group:
                    group.start_soon(long_poll)
                    await wait_for_subscribers(push_client, "/send-update/news", 1, timeout=30)
                    # The passthrough reached Django, and ready() connected the receiver.
                    await anyio.to_thread.run_sync(
                        django.wait_for, r"Subscribed: AnonymousUser news"
                    )
                    await anyio.to_thread.run_sync(shell, activate + publish, 120)
        (response,) = received
        assert response.status_code == 200, response.text
        assert json.loads(response.text) == {"type": "headline", "text": "pushserver works"}
        assert response.headers["access-control-allow-origin"] == django_url
    finally:
        for server in started:
            server.stop()
