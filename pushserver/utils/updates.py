"""Publishing from Django: ``send_update`` and the URL helpers."""

#: "host:port" of the push server running in this process (set by ``runpushserver``).
current_host: str | None = None
