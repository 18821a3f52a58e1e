"""Stores as a third party writes them (tests/test_store_options.py): one declares its
options, one does not."""

from pushserver.backends.memory import MemoryBackend
from pushserver.options import TEXT, Option


class TaggedStore(MemoryBackend):
    """The memory store plus an option of its own, ``tag``, shown in its status."""

    option_table = (
        *MemoryBackend.option_table,
        Option("tag", "push", TEXT, 900, hint="Use e.g. 'news'.", doc="shown in the status"),
    )

    def __init__(self, *, tag: str = "push", **options):
        super().__init__(**options)
        self.tag = tag

    @classmethod
    def check_combinations(cls, c, key, options):
        super().check_combinations(c, key, options)
        if options["tag"] == "reserved":
            c.error(f"{key}['tag']", "'reserved' is reserved", "Use another tag.", 901)

    def status(self):
        return {**super().status(), "tag": self.tag}


class UndeclaredStore(MemoryBackend):
    """A store that declares no options: they reach it as given, unchecked."""

    option_table = None
