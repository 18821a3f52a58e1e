"""Sessions: ``nox -s tests`` (the README's test command: the whole suite on the newest
supported pair, Python 3.13 and Django 6.1), the Python x Django x store x transport matrix,
the suite against an installed wheel, lint, types, docs, bench.

Supported: Python 3.11, 3.12 and 3.13 x Django 5.2, 6.0 and 6.1, except Django 6.x on
Python 3.11 (Django 6.0 needs 3.12). ``nox -l`` lists every combination.

Interpreters are looked for on ``PATH`` (a ``python3.12`` that runs) and then under
``~/.pyenv/versions/`` (where this project's machines keep 3.12 and 3.13, off ``PATH``); a
session whose Python is in neither is skipped with nox's "interpreter not found" message
(an error under ``CI``, or with ``--error-on-missing-interpreters``).

Every test session installs what the suite needs itself: the package with its ``test``
extra, and, on a Debian machine where they are missing, ``redis-server``,
``redis-sentinel``, ``chromium`` and ``npm`` from Debian's packages (the browser tests drive
/usr/bin/chromium; no browser download).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.download_python = "never"  # only interpreters found here (module docstring)

PYTHON = "3.11"  # lint, typecheck, docs, bench
PYTHONS = ["3.11", "3.12", "3.13"]
DJANGOS = ["5.2", "6.0", "6.1"]
NEWEST = ("3.13", "6.1")
OLDEST = ("3.11", "5.2")
#: Where the test servers keep their channels (``PUSHSERVER_TEST_STORE``, see tests/conftest.py).
STORES = ["memory", "redis"]
#: What the test servers serve (``PUSHSERVER_TEST_TRANSPORT``): every transport, or only one
#: as ``runpushserver --transport X`` does.
TRANSPORTS = ["all", "longpoll", "eventsource", "websocket"]
ROOT = Path(__file__).resolve().parent


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def supported(python: str, django: str) -> bool:
    """Django 6.0 and later need Python 3.12 or later."""
    return not (_as_tuple(django) >= (6, 0) and _as_tuple(python) < (3, 12))


PAIRS = [(python, django) for python in PYTHONS for django in DJANGOS if supported(python, django)]


def _runs(executable: str) -> bool:
    try:
        result = subprocess.run([executable, "-c", ""], capture_output=True, timeout=30)
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in path.parent.parent.name.split("."))


def find_interpreters() -> None:
    """Make ``pythonX.Y`` found for each supported X.Y: a working one on PATH wins, else the
    newest ``~/.pyenv/versions/X.Y.*`` (linked from .nox/pythons/, put first on PATH: pyenv's
    own ``python3.12`` shim on PATH fails unless 3.12 is pyenv's selected version)."""
    links = ROOT / ".nox" / "pythons"
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = False
    for version in PYTHONS:
        name = f"python{version}"
        on_path = shutil.which(name)
        if on_path and Path(on_path).parent != links and _runs(on_path):
            continue
        candidates = sorted(pyenv.glob(f"{version}.*/bin/{name}"), key=_version_key)
        candidates = [c for c in candidates if _version_key(c)[-1] >= 0]  # releases only
        if not candidates:
            continue  # nox says it is not found and skips the session
        links.mkdir(parents=True, exist_ok=True)
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(candidates[-1])
        found = True
    if found and str(links) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(links), os.environ.get("PATH", "")])


find_interpreters()


def ensure_system_packages(session: nox.Session) -> None:
    """Install redis-server, redis-sentinel, chromium and npm from Debian when they are
    missing (root only): the list .ci/run installs before it runs nox."""
    missing = [name for name in ("redis-server", "redis-sentinel") if shutil.which(name) is None]
    if not os.path.exists("/usr/bin/chromium"):
        missing.append("chromium")
    if shutil.which("npm") is None:  # the browser tests fetch their pages' libraries
        missing.append("npm")
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
    django: str,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> None:
    ensure_system_packages(session)
    # uvloop: the bench smoke tests run servers with --loop uvloop; docs: tests/test_docs.py.
    session.install("-e", ".[test,uvloop,docs]", f"django~={django}.0")
    session.run("python", "-m", "pytest", *args, *session.posargs, env=env or {})


@nox.session(python=NEWEST[0])
def tests(session: nox.Session) -> None:
    """The whole suite on the newest supported pair: Python 3.13, Django 6.1."""
    tests_impl(session, NEWEST[1])


@nox.session(python=NEWEST[0])
def tests_stock_worker(session: nox.Session) -> None:
    """The whole suite with hypercorn's own asyncio worker serving instead of pushserver's
    (``PUSHSERVER_HYPERCORN_WORKER=stock``): what a hypercorn upgrade is tried with first.
    Tests of what only pushserver's worker provides skip themselves."""
    tests_impl(session, NEWEST[1], env={"PUSHSERVER_HYPERCORN_WORKER": "stock"})


@nox.session(python=OLDEST[0])
def tests_oldest(session: nox.Session) -> None:
    """The whole suite on the oldest supported pair: Python 3.11, Django 5.2 (as the
    matrix's ``tests_matrix(python='3.11', django='5.2', store='memory', transport='all')``)."""
    tests_impl(session, OLDEST[1])


@nox.session
@nox.parametrize("transport", TRANSPORTS)
@nox.parametrize("store", STORES)
@nox.parametrize(["python", "django"], PAIRS)
def tests_matrix(session: nox.Session, django: str, store: str, transport: str) -> None:
    """The suite on one supported Python and Django, store and transport.

    ``store='memory', transport='all'`` is the whole suite. ``store='redis'`` runs every
    test server on a private redis-server (``PUSHSERVER_TEST_STORE=redis``), each with its
    own key prefix, and leaves out tests/backends (which runs both stores in every cell) and
    the browser tests, whose pages do not depend on the store. A single transport
    (``PUSHSERVER_TEST_TRANSPORT``) runs the test servers as ``runpushserver --transport X``
    does and runs the transport tests and the browser pages (tests/transports,
    tests/browser; on redis tests/transports alone): tests about other transports skip,
    anything that silently relies on another fails. Arguments after ``--`` replace those
    paths (``nox -s tests_matrix -- tests/transports`` narrows every cell).
    """
    env = {"PUSHSERVER_TEST_STORE": store}
    args: list[str] = []
    if store == "redis":
        args += ["--ignore=tests/backends", "-m", "not browser"]
    if transport != "all":
        env["PUSHSERVER_TEST_TRANSPORT"] = transport
        if not session.posargs:
            args += ["tests/transports"]
            if store == "memory":
                args += ["tests/browser"]
    tests_impl(session, django, env=env, args=tuple(args))


@nox.session(python=NEWEST[0])
def build(session: nox.Session) -> None:
    """The sdist and the wheel in dist/ (``python -m build``: the wheel from the sdist)."""
    session.install("build")
    shutil.rmtree(ROOT / "dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(ROOT / "dist"), str(ROOT))


#: What tests_wheel leaves out: tests that read the checkout's sources or docs, or install
#: the checkout (the tutorial's), not the installed package (they run in every other
#: session), and the benchmark's smoke tests.
WHEEL_IGNORES = (
    "tests/test_docs.py",
    "tests/test_wheel.py",
    "tests/test_client_types.py",
    "tests/test_tutorial.py",
    "tests/test_bench_smoke.py",
)


@nox.session(python=NEWEST[0])
def tests_wheel(session: nox.Session) -> None:
    """The server-level tests against the wheel in dist/ installed as a user would (not
    editable). With no wheel there it queues ``nox -s build`` and skips itself: run it
    again once the wheel is built.

    pytest runs from a copy of the checkout's tracked files without pushserver/ (in the
    session's tmp directory), so neither the tests nor the servers they start (whose working
    directory is that copy, first on ``sys.path``) can import the checkout's package:
    ``PUSHSERVER_TEST_INSTALLED=1`` makes tests/conftest.py check that.
    """
    ensure_system_packages(session)
    wheels = sorted((ROOT / "dist").glob("django_pushserver-*.whl"))
    if not wheels:
        session.notify("build")
        session.skip("no wheel in dist/: run `nox -s build` first")
    session.install(f"{wheels[-1]}[test,uvloop,redis]", f"django~={NEWEST[1]}.0")
    copy = Path(session.create_tmp()) / "checkout"
    shutil.rmtree(copy, ignore_errors=True)
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if name.startswith("pushserver/") or not (ROOT / name).is_file():
            continue
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    ignores = [f"--ignore={path}" for path in WHEEL_IGNORES]
    with session.chdir(copy):
        session.run(
            "python", "-m", "pytest", *ignores, *session.posargs,
            env={"PUSHSERVER_TEST_INSTALLED": "1", "PYTHONPATH": ""},
        )


@nox.session(python=NEWEST[0])
def install_docs(session: nox.Session) -> None:
    """Every install command in the README and docs, run as written in a fresh environment
    each (tests/test_install_docs.py)."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "tests/test_install_docs.py", *session.posargs,
        env={"PUSHSERVER_TEST_INSTALL_DOCS": "1"},
    )


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


@nox.session(python=PYTHON)
def bench_instructions(session: nox.Session) -> None:
    """Instructions per delivery under each server, counted by valgrind's callgrind
    (bench/instructions.py): what the timed bench cannot tell apart on a noisy machine.

    ``nox -s bench_instructions -- --transports ws --repeat 3``; needs valgrind.
    """
    session.install("-e", ".[uvloop,uvicorn]")
    session.run("python", "-m", "bench.instructions", *session.posargs)
