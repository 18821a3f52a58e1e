"""Sessions: ``nox -s tests`` (the README's test command), the Django-by-store matrix, lint,
types, docs, bench.

Every test session installs what the suite needs itself: the package with its ``test``
extra, and, on a Debian machine where they are missing, ``redis-server`` and ``chromium``
from Debian's packages (the browser tests drive /usr/bin/chromium; no browser download).
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
DJANGO_VERSIONS = ["4.2", "5.2"]
#: Where the test servers keep their channels (``PUSHSERVER_TEST_STORE``, see tests/conftest.py).
STORES = ["memory", "redis"]


def ensure_system_packages(session: nox.Session) -> None:
    """Install redis-server and chromium from Debian when they are missing (root only)."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if not os.path.exists("/usr/bin/chromium"):
        missing.append("chromium")
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.warn(f"missing {', '.join(missing)}: install them to run the whole suite")
        return
    session.run("apt-get", "update", "-qq", external=True)
    session.run(
        "apt-get", "install", "-y", "-qq", *missing, external=True,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def tests_impl(
    session: nox.Session,
    django: str | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> None:
    ensure_system_packages(session)
    # uvloop: the bench smoke tests run servers with --loop uvloop; docs: tests/test_docs.py.
    session.install("-e", ".[test,uvloop,docs]")
    if django:
        session.install(f"django~={django}.0")
    session.run("python", "-m", "pytest", *args, *session.posargs, env=env or {})


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite on the newest supported Django."""
    tests_impl(session)


@nox.session(python=PYTHON)
@nox.parametrize("django", DJANGO_VERSIONS)
def tests_django(session: nox.Session, django: str) -> None:
    """The whole suite on each supported Django LTS."""
    tests_impl(session, django)


@nox.session(python=PYTHON)
@nox.parametrize("store", STORES)
@nox.parametrize("django", DJANGO_VERSIONS)
def tests_matrix(session: nox.Session, django: str, store: str) -> None:
    """The suite on each supported Django, with the test servers on each store.

    ``store='redis'`` runs every test server on a private redis-server
    (``PUSHSERVER_TEST_STORE=redis``), each with its own key prefix. That cell leaves out
    tests/backends, which runs both stores in every cell anyway, and the browser tests,
    whose pages do not depend on the store. Every transport is covered in every cell
    (tests/transports/test_shared_behaviour.py runs each one), so transports are not an
    axis. ``nox -s tests_matrix -- tests/transports`` narrows every cell.
    """
    args: tuple[str, ...] = ()
    if store == "redis":
        args = ("--ignore=tests/backends", "-m", "not browser")
    tests_impl(session, django, env={"PUSHSERVER_TEST_STORE": store}, args=args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, example and bench."""
    session.install("ruff")
    session.run("ruff", "check", "pushserver", "tests", "example", "bench", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    session.install("-e", ".[redis]", "mypy", "django-stubs")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation, failing on any warning."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The loopback benchmark (bench/): a table on stdout, JSON in bench/results/latest.json.

    ``nox -s bench -- --quick`` for a smoke run. nchan is measured too when Debian's nginx
    and libnginx-mod-nchan are installed.
    """
    session.install("-e", ".[uvloop]")
    session.run("python", "-m", "bench", *session.posargs)
