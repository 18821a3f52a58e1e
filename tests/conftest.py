"""Fixtures every test shares: real push server processes and the store they run on, private
redis-servers (``redis_server``, ``redis_server_factory``), a Django site database with a
logged-in user (``site_db``), and the send_update signals a test caused (``recorded``).

``PUSHSERVER_TEST_STORE=redis`` runs every test server on the redis store instead of the
memory store: one private ``redis-server`` on a free port is started for the session (on
the first server that needs it), and each server's memory stores become redis stores with
their own ``key_prefix``, keeping ``max_messages`` / ``min_messages`` / ``message_timeout``.
Tests that need the memory store itself are marked ``memory_store``; servers on trio keep
it too (the redis store runs on asyncio only).

``PUSHSERVER_TEST_TRANSPORT=X`` (longpoll, eventsource or websocket) runs every test server
as ``runpushserver --transport X`` does, serving only X, with ``PUSH_SERVER['transport']``
(what ``updates.js`` uses) set to X where the test leaves it out; a server whose test gives
its own ``--transport`` keeps it. Tests about other transports are marked
``transports(...)`` and skip; a test or page that silently relies on another transport fails.
"""

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import django  # noqa: E402

django.setup()

import pushserver  # noqa: E402
from pushserver import signals  # noqa: E402
from pushserver.testing import PushServerProcess, RedisClusterServers, RedisServer  # noqa: E402

STORES = ("memory", "redis")
#: The store test servers run on (``PUSHSERVER_TEST_STORE``); memory by default.
TEST_STORE = os.environ.get("PUSHSERVER_TEST_STORE", "memory")
#: Memory store options that mean the same on the redis store.
_SHARED_STORE_OPTIONS = {
    "type",
    "min_messages",
    "max_messages",
    "message_timeout",
    "idempotency_window",
}


def pytest_configure(config):
    if TEST_STORE not in STORES:
        raise pytest.UsageError(
            f"PUSHSERVER_TEST_STORE={TEST_STORE!r}: use one of {', '.join(STORES)}"
        )
    config.addinivalue_line(
        "markers",
        "memory_store: its push servers keep the memory store under PUSHSERVER_TEST_STORE=redis",
    )
    configure_transport(config)
    if os.environ.get("PUSHSERVER_TEST_INSTALLED") and ROOT in Path(pushserver.__file__).parents:
        # nox -s tests_wheel: the tests are to run against the installed wheel.
        raise pytest.UsageError(
            f"PUSHSERVER_TEST_INSTALLED is set but pushserver comes from the checkout "
            f"({pushserver.__file__}): run the tests from a copy without pushserver/"
        )


def pytest_report_header(config):
    return [
        f"pushserver test store: {TEST_STORE}",
        f"pushserver test transport: {TEST_TRANSPORT or 'all'}",
        f"pushserver imported from: {Path(pushserver.__file__).parent}",
    ]


_current_item: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Module-scoped servers start in their first test's setup: its markers decide the store.
    global _current_item
    _current_item = item


class _RedisStores:
    """Turns memory stores into redis stores on one lazily started redis-server."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.server = None

    def redis_store(self, options: object) -> object:
        if not isinstance(options, Mapping) or options.get("type") != "memory":
            return options  # already another store, or a bad setting a check test wants
        if not set(options) <= _SHARED_STORE_OPTIONS:
            return options  # unknown keys: a check test; the redis store would say the same
        if self.server is None:
            # A private redis-server, never the machine's own Redis.
            self.server = RedisServer(self.tmp_path_factory.mktemp("redis")).start()
        return self.server.store(**{k: v for k, v in options.items() if k != "type"})

    def rewrite(self, push_server: Mapping) -> Mapping:
        raw = push_server.get("store", {"type": "memory"})
        if not isinstance(raw, Mapping):
            return push_server
        if "type" in raw:
            store = self.redis_store(raw)
        else:
            store = {name: self.redis_store(options) for name, options in raw.items()}
        return {**push_server, "store": store}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _on_trio(args: list[str]) -> bool:
    return any(
        arg == "--loop=trio" or (arg == "--loop" and args[i + 1 : i + 2] == ["trio"])
        for i, arg in enumerate(args)
    )


@pytest.fixture(scope="session", autouse=True)
def _test_store(tmp_path_factory):
    """Under ``PUSHSERVER_TEST_STORE=redis``, every PushServerProcess started with a
    ``push_server`` dict gets redis stores (see the module docstring)."""
    if TEST_STORE != "redis":
        yield
        return
    stores = _RedisStores(tmp_path_factory)
    original_start = PushServerProcess.start

    def start(self: PushServerProcess) -> PushServerProcess:
        keep_memory = (
            self.push_server is None
            or _on_trio(self.args)
            or (_current_item is not None and _current_item.get_closest_marker("memory_store"))
        )
        if not keep_memory:
            self.push_server = stores.rewrite(self.push_server)
        return original_start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PushServerProcess, "start", start)
        yield
    stores.stop()


# -- PUSHSERVER_TEST_TRANSPORT (see the module docstring) ------------------------------------

TRANSPORTS = ("longpoll", "eventsource", "websocket")
#: The one transport every test server serves (``PUSHSERVER_TEST_TRANSPORT``); None: all.
TEST_TRANSPORT = os.environ.get("PUSHSERVER_TEST_TRANSPORT") or None


def configure_transport(config: pytest.Config) -> None:
    if TEST_TRANSPORT is not None and TEST_TRANSPORT not in TRANSPORTS:
        raise pytest.UsageError(
            f"PUSHSERVER_TEST_TRANSPORT={TEST_TRANSPORT!r}: use one of {', '.join(TRANSPORTS)}"
        )
    config.addinivalue_line(
        "markers",
        "transports(*names): the test is about these transports (longpoll, eventsource, "
        "websocket); under PUSHSERVER_TEST_TRANSPORT=X it is skipped unless it names only X",
    )


def about_transports(*names: str) -> pytest.MarkDecorator:
    """``transports(*names)``, checked: a misspelt name would skip a test everywhere."""
    unknown = set(names) - set(TRANSPORTS)
    assert names and not unknown, f"unknown transports {unknown}"
    return pytest.mark.transports(*names)


def transport_params(*names: str, served: Mapping[str, str] | None = None) -> list:
    """Parameters, one per transport name, each marked ``transports`` with the name the
    server knows it by (``served`` maps a test's own names to those)."""
    served = served or {}
    return [
        pytest.param(name, marks=about_transports(served.get(name, name)), id=name)
        for name in names
    ]


def pytest_collection_modifyitems(config, items):
    if TEST_TRANSPORT is None:
        return
    for item in items:
        about = {name for mark in item.iter_markers("transports") for name in mark.args}
        if about and about != {TEST_TRANSPORT}:
            reason = f"about {', '.join(sorted(about))}: the servers serve only {TEST_TRANSPORT}"
            item.add_marker(pytest.mark.skip(reason=reason))


def _gives_transport(args: list[str]) -> bool:
    return any(arg == "--transport" or arg.startswith("--transport=") for arg in args)


@pytest.fixture(scope="session", autouse=True)
def _test_transport():
    """Under ``PUSHSERVER_TEST_TRANSPORT=X``, every PushServerProcess serves only X."""
    if TEST_TRANSPORT is None:
        yield
        return
    original_start = PushServerProcess.start

    def start(self: PushServerProcess) -> PushServerProcess:
        if not _gives_transport(self.args):
            self.args = [*self.args, "--transport", TEST_TRANSPORT]
            if isinstance(self.push_server, Mapping) and "transport" not in self.push_server:
                self.push_server = {**self.push_server, "transport": TEST_TRANSPORT}
        return original_start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PushServerProcess, "start", start)
        yield


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def push_server_factory():
    """Start real ``runpushserver`` processes with a given PUSH_SERVER; stop them after."""
    started: list[PushServerProcess] = []

    def start(push_server=None, *args, **kwargs) -> PushServerProcess:
        server = PushServerProcess(
            "tests.project.settings", push_server=push_server, args=args, cwd=str(ROOT), **kwargs
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def push_server(push_server_factory):
    """A push server with the default locations /publisher/ and /subscriber/."""
    return push_server_factory(
        {
            "locations": [
                {"type": "publisher", "prefix": "/publisher/"},
                {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
            ]
        }
    )


@pytest.fixture(scope="module")
def server(request):
    """One real ``runpushserver`` per test module, with the module's ``CONFIG``."""
    config = request.module.CONFIG
    with PushServerProcess("tests.project.settings", push_server=config, cwd=str(ROOT)) as process:
        yield process


@pytest.fixture
async def client(request, server):
    """An httpx client on ``server``; a module's ``CLIENT_TIMEOUT`` overrides the 10 s."""
    import httpx

    timeout = getattr(request.module, "CLIENT_TIMEOUT", 10)
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=server.url, timeout=timeout, limits=limits) as client:
        yield client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of our own for the session (never the machine's); tests keep apart
    by key prefix (``redis_server.store()``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of our own (3 primaries, 3 replicas) for the session, for tests that
    kill none of its nodes; tests keep apart by key prefix (``redis_cluster.store()``)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.close()


@pytest.fixture
def redis_server_factory(tmp_path_factory):
    """Start dedicated redis-servers (to stop, kill, restart or configure); stopped after."""
    started: list[RedisServer] = []

    def start(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def site_db(tmp_path_factory):
    """A file SQLite DB shared by the server processes, with a user and a logged-in session."""
    path = tmp_path_factory.mktemp("db") / "db.sqlite3"
    env = {
        **os.environ,
        "PUSHSERVER_TEST_DB": str(path),
        "DJANGO_SETTINGS_MODULE": "tests.project.settings",
    }
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    script = (
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "user = get_user_model().objects.create_user('alice', password='pw')\n"
        "session = SessionStore()\n"
        "session[SESSION_KEY] = str(user.pk)\n"
        "session[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "session[HASH_SESSION_KEY] = user.get_session_auth_hash()\n"
        "session.create()\n"
        "print(session.session_key)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", script],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return {"PUSHSERVER_TEST_DB": str(path), "session": result.stdout.split()[-1]}


@pytest.fixture
def recorded():
    """Every pre/post_send_update sent while the test runs, in order."""
    events = []

    def pre(sender, **kwargs):
        events.append(("pre", sender, kwargs))

    def post(sender, **kwargs):
        events.append(("post", sender, kwargs))

    signals.pre_send_update.connect(pre)
    signals.post_send_update.connect(post)
    yield events
    signals.pre_send_update.disconnect(pre)
    signals.post_send_update.disconnect(post)
