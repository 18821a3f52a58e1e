"""Declared options and what is wrong with them: the vocabulary of ``PUSH_SERVER`` checks.

Every setting is declared once, as an :class:`Option`: its name, its default, the
:class:`Kind` of value it takes, the check id that reports a bad value, a hint and one line
of doc. The settings parser (:mod:`pushserver.config`) reads the top-level and location keys
from such tables; a store class declares its own (:class:`Configurable`), so a backend named
by dotted path gets its unknown keys and types checked like the built-in ones.

Checking never raises: each thing wrong becomes a :class:`Problem` (key, message, hint,
check id), which the Django system checks report at startup. This module imports nothing
else of pushserver, so the core (backends included) can use it without Django.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings, and how to fix it."""

    key: str
    message: str
    hint: str
    id: str
    level: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.key}: {self.message} ({self.hint})"


class Collector:
    """The problems found so far; ``code`` is the number of ``pushserver.E<code>``."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, key: str, message: str, hint: str, code: int) -> None:
        self.problems.append(Problem(key, message, hint, f"pushserver.E{code:03d}"))

    def warning(self, key: str, message: str, hint: str, code: int) -> None:
        self.problems.append(Problem(key, message, hint, f"pushserver.W{code:03d}", "warning"))

    def unknown_keys(
        self, key: str, given: Mapping[str, Any], allowed: set[str], code: int
    ) -> None:
        """An error per key of ``given`` not in ``allowed``, with a did-you-mean."""
        for name in given:
            if name in allowed:
                continue
            close = difflib.get_close_matches(str(name), sorted(allowed), n=1)
            suggestion = f"did you mean {close[0]!r}? " if close else ""
            self.error(
                f"{key}[{name!r}]",
                f"unknown key {name!r}",
                f"{suggestion}Known keys: {', '.join(sorted(allowed))}.",
                code,
            )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: Any) -> TypeGuard[int]:
    """A whole number >= 0 (what :data:`WHOLE` accepts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_non_negative(
    c: Collector, key: str, value: Any, code: int, *, integer: bool, hint: str | None = None
) -> bool:
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else is_number(value)
    if not ok or value < 0:
        kind = "a whole number" if integer else "a number of seconds"
        hint = hint or f"Set {key} to {kind}, e.g. 0."
        c.error(key, f"must be {kind} >= 0, not {value!r}", hint, code)
        return False
    return True


# -- kinds of value -----------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What values an option takes: ``check`` reports a bad one (and returns False),
    ``convert`` turns a good one into the type the config holds."""

    check: Callable[[Collector, str, Any, Option], bool]
    convert: Callable[[Any], Any] = lambda value: value


def _whole(c: Collector, key: str, value: Any, option: Option) -> bool:
    return check_non_negative(c, key, value, option.code, integer=True, hint=option.hint)


def _seconds(c: Collector, key: str, value: Any, option: Option) -> bool:
    return check_non_negative(c, key, value, option.code, integer=False, hint=option.hint)


def _positive_seconds(c: Collector, key: str, value: Any, option: Option) -> bool:
    if is_number(value) and 0 < value < float("inf"):
        return True
    hint = option.hint or "Use e.g. 1."
    c.error(key, f"must be a number of seconds > 0, not {value!r}", hint, option.code)
    return False


def _instance_of(
    kind: type, wording: str, plain_hint: str
) -> Callable[[Collector, str, Any, Option], bool]:
    """The check of a kind that is one Python type: ``wording`` is what the value must be."""

    def check(c: Collector, key: str, value: Any, option: Option) -> bool:
        if isinstance(value, kind):
            return True
        c.error(key, f"must be {wording}, not {value!r}", option.hint or plain_hint, option.code)
        return False

    return check


#: A whole number >= 0.
WHOLE = Kind(_whole, int)
#: A number of seconds >= 0.
SECONDS = Kind(_seconds, float)
#: A finite number of seconds > 0.
POSITIVE_SECONDS = Kind(_positive_seconds, float)
#: True or False.
FLAG = Kind(_instance_of(bool, "True or False", "Use a bool."))
#: A string.
TEXT = Kind(_instance_of(str, "a string", "Use a string."))


@dataclass(frozen=True)
class Option:
    """One setting: the single place its name, default, check and check id are written.

    An option without a ``kind`` is checked by hand where it is parsed (its shape is more
    than a kind can say); ``code`` then still names the check id, for the docs.
    """

    name: str
    default: Any
    kind: Kind | None = None
    code: int = 0
    #: The fix a bad value's error suggests (each kind has a plain one).
    hint: str | None = None
    doc: str = ""

    def check(self, c: Collector, key: str, value: Any) -> bool:
        """Report ``value`` if it is not of the option's kind. None is accepted when it is
        the default (the setting is optional)."""
        if self.kind is None or (value is None and self.default is None):
            return True
        return self.kind.check(c, key, value, self)

    def read(self, c: Collector, key: str, given: Mapping[str, Any], default: Any = ...) -> Any:
        """The option's value in ``given`` (``key`` is the dict's own key), converted; its
        default (or ``default``) when missing or bad, a bad one reported."""
        default = self.default if default is ... else default
        value = given.get(self.name, default)
        if not self.check(c, f"{key}[{self.name!r}]", value):
            return default
        if value is None or self.kind is None:
            return value
        return self.kind.convert(value)


class Configurable:
    """A class that declares the options ``PUSH_SERVER['store']`` may give it.

    :class:`~pushserver.backends.base.Backend` is one, so every store class can declare an
    :attr:`option_table` (a tuple of :class:`Option`) and gets, from this class, unknown keys
    refused (``pushserver.E013``) and each option's kind checked; :meth:`check_combinations`
    adds what one option alone cannot say. A class that declares no table takes any options,
    unchecked (as stores written before tables did).
    """

    #: The options the class takes, with their defaults; None: any, unchecked.
    option_table: ClassVar[tuple[Option, ...] | None] = None

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {option.name: option.default for option in cls.option_table or ()}

    @classmethod
    def check_options(
        cls, key: str, options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[Problem]]:
        """The options (without ``type``) completed with the defaults, and what is wrong with
        them; ``key`` names the store dict in the messages (``PUSH_SERVER['store']``).
        Values are kept as given: the class is not built while there are errors."""
        given = {name: value for name, value in options.items() if name != "type"}
        if cls.option_table is None:
            return given, []
        c = Collector()
        c.unknown_keys(key, options, {"type", *cls.option_defaults()}, 13)
        merged = {**cls.option_defaults(), **given}
        for option in cls.option_table:
            option.check(c, f"{key}[{option.name!r}]", merged[option.name])
        cls.check_combinations(c, key, merged)
        return merged, c.problems

    @classmethod
    def check_combinations(cls, c: Collector, key: str, options: Mapping[str, Any]) -> None:
        """Report what is wrong between options. Each one's kind was checked already, but
        this runs either way (so that every problem is reported at once): look before using
        a value."""

    @classmethod
    def check_message_size(
        cls, c: Collector, key: str, options: Mapping[str, Any], max_message_size: int
    ) -> None:
        """Report what is wrong with the store's options given the largest message its
        publisher locations accept (``max_message_size``, > 0): a budget that cannot hold
        one."""
