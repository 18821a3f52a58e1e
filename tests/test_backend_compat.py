"""Stores written for an earlier Backend interface keep working (docs/topics.md#stores)."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from pushserver.backends import backend_class
from pushserver.backends.base import Backend
from tests.project.helpers import assert_still_serving, path

OLD_STORE = "tests.project.old_store.OldSignatureStore"


def import_old_store() -> type[Backend]:
    sys.modules.pop("tests.project.old_store", None)
    with pytest.warns(DeprecationWarning, match=r"create\(\) takes no 'publisher' keyword"):
        importlib.import_module("tests.project.old_store")
    return backend_class(OLD_STORE)


@pytest.mark.anyio
async def test_create_without_publisher_is_called_without_it():
    from pushserver.hub import Hub

    store = import_old_store()(channel_timeout=0)
    hub = Hub(store)
    async with store:
        await hub.open_channel("made-by-a-subscriber", create=True)  # publisher=False
        assert await store.create("made-by-a-publisher", publisher=True) is True
        assert store.options["created"] == ["made-by-a-subscriber", "made-by-a-publisher"]
        assert await store.exists("made-by-a-subscriber")


def test_current_signatures_are_left_alone():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning for these

        class Current(Backend):
            async def create(self, channel_id: str, *, publisher: bool = True) -> bool:
                return publisher

        class AnyKeywords(Backend):
            async def create(self, channel_id: str, **options) -> bool:
                return options["publisher"]

    assert Current.__dict__["create"].__qualname__.endswith("Current.create")
    assert AnyKeywords.__dict__["create"].__qualname__.endswith("AnyKeywords.create")


@pytest.mark.anyio
async def test_a_server_on_an_old_store_creates_channels_on_get(push_server_factory):
    import httpx

    server = push_server_factory(
        {
            "store": {"type": OLD_STORE},
            "locations": [
                {"type": "publisher", "prefix": "/publisher/"},
                {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
            ],
        }
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        # A long poll on a new channel creates it (create_on_get: publisher=False), waits,
        # and gets what is published: no 500 from a TypeError.
        await assert_still_serving(client)
        # A GET on a missing channel with create_on_get off is still a 404, not a create.
        response = await client.get(path("/publisher/", "never-made"))
        assert response.status_code == 404
