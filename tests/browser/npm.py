"""Browser libraries from npm, installed when the tests run (nothing vendored).

:data:`PACKAGES` names every library a browser test loads, pinned; the first call of
:func:`npm_package` installs them all with one ``npm install`` into a cache directory
(``PUSHSERVER_TEST_NPM_DIR``, default ``.npm-test/`` at the repository root, gitignored),
which later sessions reuse: npm only checks the lock file then. A test page loads a file as
``/npm/<name>/<path in the package>``; the ``new_page`` fixture answers those URLs from the
cache through a Playwright route (:func:`route_npm`), on whatever origin the page is, so no
server or Django setting is involved.

Several versions of one package are installed under aliases (``jquery-3.7`` is
``npm:jquery@3.7.1``): ``npm_package("jquery", "3.7")``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

#: alias -> npm spec. Add a library here to use it in a test page.
PACKAGES = {
    "htmx.org": "4.0.1",  # htmx 4; its SSE and WS extensions are dist/ext/hx-sse.js, hx-ws.js
    "@hotwired/turbo": "8.0.23",
    "jquery-1.12": "npm:jquery@1.12.4",
    "jquery-3.7": "npm:jquery@3.7.1",
    "jquery-4.0": "npm:jquery@4.0.0",
    "nchan": "1.0.10",  # NchanSubscriber.js, from slact/nchan.js
    "typescript": "5.9.3",  # checks pushserver.d.ts (tests/test_client_types.py)
}
#: The URL path prefix test pages load npm files from.
PREFIX = "/npm/"

_lock = threading.Lock()
_installed: Path | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("PUSHSERVER_TEST_NPM_DIR") or ROOT / ".npm-test")


def install() -> Path:
    """Install :data:`PACKAGES` (once per process); the ``node_modules`` directory.

    Skips the test when npm is missing or cannot reach its registry."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is missing: install Node.js to run the tests that load npm packages")
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"private": True, "dependencies": PACKAGES}
        (directory / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(directory),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--loglevel",
                "error",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.skip(f"npm install failed:\n{result.stderr[-2000:]}")
        _installed = directory / "node_modules"
        return _installed


def npm_package(name: str, version: str | None = None) -> Path:
    """The installed package's directory: ``npm_package("htmx.org")``,
    ``npm_package("jquery", "4.0")`` (the alias ``jquery-4.0`` of :data:`PACKAGES`)."""
    alias = f"{name}-{version}" if version else name
    if alias not in PACKAGES:
        raise KeyError(f"{alias!r} is not in tests/browser/npm.py PACKAGES")
    return install() / alias


def npm_url(name: str, path: str, version: str | None = None) -> str:
    """The URL path a test page loads ``path`` of the package from."""
    return f"{PREFIX}{name}-{version}/{path}" if version else f"{PREFIX}{name}/{path}"


def _resolve(url: str) -> Path | None:
    """The file an ``/npm/<alias>/<path>`` URL names, None outside the installed packages."""
    path = unquote(urlsplit(url).path)
    rest = path[path.index(PREFIX) + len(PREFIX) :]
    modules = install().resolve()
    for alias in PACKAGES:
        if rest.startswith(alias + "/"):
            target = (modules / alias / rest[len(alias) + 1 :]).resolve()
            if target.is_relative_to(modules / alias) and target.is_file():
                return target
    return None


_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json"}


def route_npm(context) -> None:
    """Answer ``/npm/...`` requests of a Playwright browser context from the cache."""

    def handle(route):
        target = _resolve(route.request.url)
        if target is None:
            route.fulfill(status=404, body="not an installed npm file")
            return
        route.fulfill(
            path=str(target),
            content_type=_TYPES.get(target.suffix, "application/octet-stream"),
            # Pages on another origin load them as modules too.
            headers={"access-control-allow-origin": "*"},
        )

    context.route(f"**{PREFIX}**", handle)
