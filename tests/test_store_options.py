"""A store class declares its options; the settings checks hold every store, built-in or
named by dotted path, to its declaration (docs/topics.md#stores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from pushserver.backends.memory import MemoryBackend
from pushserver.config import load, parse
from pushserver.testing import PushServerProcess
from tests.project.helpers import pushserver_messages

ROOT = Path(__file__).resolve().parent.parent
TAGGED = "tests.project.tagged_store.TaggedStore"
UNDECLARED = "tests.project.tagged_store.UndeclaredStore"
STORE = "PUSH_SERVER['store']"


@pytest.mark.parametrize(
    ("options", "check_id", "key", "text"),
    [
        ({"tga": "news"}, "E013", "tga", "did you mean 'tag'?"),
        ({"tag": 5}, "E900", "tag", "Use e.g. 'news'."),
        ({"tag": "reserved"}, "E901", "tag", "Use another tag."),
        ({"max_messages": -1}, "E014", "max_messages", "whole number"),
    ],
)
def test_a_declared_option_is_checked_at_startup(options, check_id, key, text):
    """Unknown keys, the kind of each option (its own and those it took from the memory
    store) and its combination check, all as Django system checks naming the key."""
    (message,) = pushserver_messages({"store": {"type": TAGGED, **options}})
    assert message.id == f"pushserver.{check_id}"
    assert message.msg.startswith(f"{STORE}[{key!r}]: ")
    assert text in message.msg + message.hint


def test_declared_defaults_fill_in_the_options():
    config = load({"store": {"type": TAGGED, "tag": "news", "max_messages": 3}})
    assert config.stores["default"].options == {
        **MemoryBackend.option_defaults(),
        "max_messages": 3,
        "tag": "news",
    }


def test_a_store_without_declared_options_takes_any_unchecked():
    config, problems = parse({"store": {"type": UNDECLARED, "anything": [1]}})
    assert problems == []
    assert config.stores["default"].options == {"anything": [1]}


def test_a_store_that_cannot_be_imported_is_reported_once():
    """Its options cannot be checked; the import failure is the one error (E016)."""
    messages = pushserver_messages({"store": {"type": "tests.project.missing.Store", "x": 1}})
    assert [m.id for m in messages] == ["pushserver.E016"]


def test_redis_options_are_checked_without_redis_py():
    """The redis store's options are declared apart from redis-py: without it (blocked in
    a child interpreter) they are still checked."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from pushserver.config import parse\n"
        "_, problems = parse({'store': {'type': 'redis', 'wait_replicas': -1, 'prot': 1}})\n"
        "print(sorted((p.id, p.key) for p in problems))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        sorted(
            [
                ("pushserver.E013", f"{STORE}['prot']"),
                ("pushserver.E172", f"{STORE}['wait_replicas']"),
            ]
        )
    )


def test_runpushserver_refuses_a_bad_declared_option():
    server = PushServerProcess(
        "tests.project.settings", push_server={"store": {"type": TAGGED, "tag": 5}}, cwd=str(ROOT)
    )
    with pytest.raises(RuntimeError) as info:
        server.start()
    output = str(info.value)
    assert "runpushserver exited with 1" in output
    assert "pushserver.E900" in output
    assert f"{STORE}['tag']" in output


@pytest.mark.anyio
async def test_a_declared_option_reaches_the_running_store(push_server_factory):
    server = push_server_factory(
        {
            "store": {"type": TAGGED, "tag": "news"},
            "locations": [
                {"type": "publisher", "prefix": "/publisher/"},
                {"type": "status", "prefix": "/status/"},
            ],
        }
    )
    with anyio.fail_after(30):
        async with httpx.AsyncClient(base_url=server.url) as client:
            published = await client.post("/publisher/c", content=b"x")
            assert published.status_code == 202, published.text
            response = await client.get("/status/json")
    assert response.status_code == 200, response.text
    store = response.json()["stores"]["default"]
    assert store["backend"]["tag"] == "news"
    assert store["type"] == TAGGED
