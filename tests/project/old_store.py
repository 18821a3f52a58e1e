"""A store written for the Backend interface before ``create`` took ``publisher``: the
server must keep working with it (tests/test_backend_compat.py). Importing it warns."""

from pushserver.backends.memory import MemoryBackend


class OldSignatureStore(MemoryBackend):
    """The memory store with the old ``create(channel_id)``: counts its calls."""

    async def create(self, channel_id):
        self.options.setdefault("created", []).append(channel_id)
        return await super().create(channel_id)
