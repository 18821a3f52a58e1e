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
when it can) and takes a minute or two: marked ``tutorial``, so that a test matrix can run it
once (``-m tutorial``) rather than in every cell (``-m "not tutorial"``).
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
from tests.browser.conftest import browser, new_page  # noqa: F401 -- fixtures
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


class Tutorial:
    """The tutorial's project, followed up to its servers, which are running."""

    def __init__(self, root: Path) -> None:
        self.django_port, self.push_port = free_port(), free_port()
        self.django_url = f"http://127.0.0.1:{self.django_port}"
        self.project = root / "tutorial"
        self.project.mkdir()
        # A newcomer's shell: python3 is the interpreter running this test, no venv active,
        # no settings module or Python path of ours.
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "python3").symlink_to(sys._base_executable)
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("VIRTUAL_ENV", "PYTHONPATH", "DJANGO_SETTINGS_MODULE", "PYTHONHOME")
            and not key.startswith("PUSHSERVER_")
        }
        self.env["PATH"] = os.pathsep.join([str(bin_dir), self.env.get("PATH", "")])
        self.env["PYTHONUNBUFFERED"] = "1"  # the receivers' prints reach the log at once
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.activate = ""  # after the first block the reader's terminal has the venv active
        self.publish_command = ""
        self.servers: list[Background] = []
        self.root = root

    def as_here(self, text: str) -> str:
        return (
            text.replace("/path/to/pushserver", str(ROOT))
            .replace("127.0.0.1:8000", f"127.0.0.1:{self.django_port}")
            .replace("127.0.0.1:8001", f"127.0.0.1:{self.push_port}")
        )

    def shell(self, commands: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["bash", "-e", "-c", self.activate + commands],
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{commands}\n{result.stdout}"
        return result.stdout

    def follow(self) -> None:
        """Every marked step, in order, up to the running servers."""
        servers: list[str] = []
        for kind, path, text in steps():
            text = self.as_here(text)
            if kind == "run":
                self.shell(text)
                self.activate = "source .venv/bin/activate\n"
            elif kind == "file":
                target = self.project / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            elif kind == "append":
                target = self.project / path
                assert target.exists(), f"{path} should exist by now (startproject writes it)"
                target.write_text(target.read_text() + "\n" + text)
            elif kind == "servers":
                servers = [line for line in text.splitlines() if line.strip()]
            elif kind == "publish":
                self.publish_command = text
            else:
                pytest.fail(f"unknown tutorial step {kind!r}")
        check = self.shell("python manage.py check")
        assert "no issues" in check, check  # nor the first-use warnings: the hosts are set
        for i, command in enumerate(servers):
            self.servers.append(Background(command, self.project, self.env, self.root / f"{i}.log"))
        django, push = self.servers
        django.wait_for(
            rf"Starting .*development server at http://127\.0\.0\.1:{self.django_port}/"
        )
        push.wait_for(rf"running at http://127\.0\.0\.1:{self.push_port}/")

    def publish(self, text: str = "pushserver works") -> None:
        """The tutorial's publish command, with ``text`` for its headline."""
        self.shell(self.publish_command.replace("pushserver works", text), 120)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    if shutil.which("bash") is None:
        pytest.skip("the tutorial's commands are for a POSIX shell")
    followed = Tutorial(tmp_path_factory.mktemp("tutorial"))
    try:
        followed.follow()
        yield followed
    finally:
        followed.stop()


@pytest.mark.tutorial
@pytest.mark.anyio
async def test_the_tutorial_works_as_written(tutorial):
    django = tutorial.servers[0]
    django_url = tutorial.django_url
    async with httpx.AsyncClient(timeout=30) as client:
        page = (await client.get(f"{django_url}/")).text
        subscribe = re.search(r"'news': '([^']+)'", page)
        assert subscribe, page
        channel_url = subscribe.group(1).encode().decode("unicode_escape")
        assert channel_url == f"http://127.0.0.1:{tutorial.push_port}/updates/news"
        script = re.search(r'<script src="([^"]+)" data-pushserver-transport="longpoll">', page)
        assert script, page
        client_js = await client.get(django_url + script.group(1))
        assert client_js.status_code == 200 and "$.updates" in client_js.text

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{tutorial.push_port}", timeout=30
    ) as push_client:
        received: list[httpx.Response] = []

        async def long_poll() -> None:
            received.append(await push_client.get("/updates/news", headers={"origin": django_url}))

        async with anyio.create_task_group() as group:
            group.start_soon(long_poll)
            await wait_for_subscribers(push_client, "/send-update/news", 1, timeout=30)
            # The passthrough reached Django, and ready() connected the receiver.
            await anyio.to_thread.run_sync(django.wait_for, r"Subscribed: AnonymousUser news")
            await anyio.to_thread.run_sync(tutorial.publish)
    (response,) = received
    assert response.status_code == 200, response.text
    assert json.loads(response.text) == {"type": "headline", "text": "pushserver works"}
    assert response.headers["access-control-allow-origin"] == django_url


#: What the page's jQuery <script> gets instead of the CDN (the tests reach loopback only).
JQUERY = ROOT / "example" / "live" / "static" / "live" / "jquery.min.js"


@pytest.mark.tutorial
@pytest.mark.browser
def test_the_tutorial_page_in_a_browser(tutorial, request):
    """Last in this module: sync Playwright keeps a loop running while its browser is open."""
    from playwright.sync_api import expect

    page = request.getfixturevalue("new_page")()
    page.context.route("https://code.jquery.com/**", lambda route: route.fulfill(path=JQUERY))
    page.goto(tutorial.django_url + "/")
    expect(page.locator("#headlines li").first).to_have_text("pushserver works")  # replayed
    tutorial.publish("seen in Chromium")
    expect(page.locator("#headlines li").last).to_have_text("seen in Chromium")
    assert page.errors == []
