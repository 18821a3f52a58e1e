"""The documentation builds without a warning and keeps up with the code it describes."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pushserver import config
from pushserver.message import ChannelInfo, MessageId
from pushserver.protocol import render_channel_info

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    assert (site / "settings" / "index.html").is_file()
    # A fence Markdown did not take as one (inside a definition, say) shows up as text.
    broken = sorted(
        str(page.relative_to(site)) for page in site.rglob("*.html")
        if "```" in page.read_text(encoding="utf-8")
    )
    assert not broken, f"code fences rendered as text in {broken}"


#: The modules that declare and check ``PUSH_SERVER`` (the stores' options included).
SETTINGS_MODULES = [
    *sorted((ROOT / "pushserver" / "config").glob("*.py")),
    ROOT / "pushserver" / "options.py",
    *(ROOT / "pushserver" / "backends" / name for name in ("base.py", "memory.py")),
    ROOT / "pushserver" / "backends" / "redis_options.py",
]


def _store_classes():
    from pushserver.backends import BUILTIN_OPTIONS, options_class

    return {name: options_class(name) for name in BUILTIN_OPTIONS}


def _declared_options():
    """Every option declared in a table: top level, locations, the built-in stores."""
    options = [*config.TOP_LEVEL_OPTIONS, *config.LOCATION_OPTIONS]
    for cls in _store_classes().values():
        options.extend(cls.option_table)
    return options


def _check_ids() -> set[str]:
    """Every ``pushserver.E0xx`` / ``W0xx`` id the settings checks can report: the check ids
    the option tables declare, and those written out in the checking code."""
    ids = {f"pushserver.E{option.code:03d}" for option in _declared_options() if option.code}
    for module in SETTINGS_MODULES:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("error", "warning", "unknown_keys") and node.args:
                code = node.args[-1]
            elif name == "check_non_negative" and len(node.args) >= 4:
                code = node.args[3]  # (collector, key, value, code)
            else:
                continue
            if isinstance(code, ast.Constant) and isinstance(code.value, int):
                letter = "W" if name == "warning" else "E"
                ids.add(f"pushserver.{letter}{code.value:03d}")
    checks = (ROOT / "pushserver" / "checks.py").read_text(encoding="utf-8")
    ids.update(re.findall(r"pushserver\.[EW]\d{3}", checks))
    return ids


def test_every_system_check_is_documented():
    ids = _check_ids()
    assert len(ids) > 30  # the scan found the checks
    missing = sorted(i for i in ids if f"`{i}`" not in read("settings.md"))
    assert not missing, f"docs/settings.md does not list {missing}"


def test_every_setting_is_documented():
    page = read("settings.md")
    keys = set(config.TOP_LEVEL_KEYS) | config.PUBLISHER_KEYS | config.SUBSCRIBER_KEYS
    keys |= config.STATUS_KEYS
    for options in config.STORE_DEFAULTS.values():
        keys.update(options)
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, f"docs/settings.md does not describe {missing}"


def _as_documented(value) -> str:
    """A default as docs/settings.md writes it: Python's None and bools, JSON otherwise,
    whole floats without their '.0'."""
    if value is None or isinstance(value, bool):
        return f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _section(page: str, heading: str) -> str:
    """The text under ``heading`` down to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = page.index(f"\n{heading}\n")
    rest = page[start + len(heading) + 2 :]
    ends = [rest.find(f"\n{'#' * n} ") for n in range(1, len(level) + 1)]
    ends = [end for end in ends if end >= 0]
    return rest[: min(ends)] if ends else rest


def _documented_defaults(section: str) -> dict[str, list[str]]:
    """Per key, the default column of each table row naming it (a row may name several)."""
    found: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            found.setdefault(name, []).append(cells[2])
    return found


@pytest.mark.parametrize(
    ("heading", "table", "in_words"),
    [
        ("## Top-level keys", "top level", {"locations", "max_connections"}),
        ("## Locations", "locations", {"type", "url", "prefix", "allow_from", "max_message_size"}),
        ("### memory", "memory", set()),
        ("### redis", "redis", set()),
    ],
)
def test_documented_defaults_are_the_declared_ones(heading, table, in_words):
    """Each option of a table has a row in its section of docs/settings.md whose default is
    the declared one (or, for the few ``in_words``, says it in words)."""
    if table == "top level":
        options = config.TOP_LEVEL_OPTIONS
    elif table == "locations":
        options = config.LOCATION_OPTIONS
    else:
        options = _store_classes()[table].option_table
    rows = _documented_defaults(_section(read("settings.md"), heading))
    wrong = {}
    for option in options:
        assert option.name in rows, f"{heading} in docs/settings.md has no row for {option.name}"
        if option.name in in_words:
            continue
        expected = _as_documented(option.default)
        if not any(expected in cell for cell in rows[option.name]):
            wrong[option.name] = (expected, rows[option.name])
    assert not wrong, f"docs/settings.md ({heading}): declared default vs documented: {wrong}"


def test_every_command_option_is_documented():
    from django.core.management.base import BaseCommand

    from pushserver.management.commands.runpushserver import Command

    page = read("command.md")
    django_own = {
        opt for action in BaseCommand().create_parser("manage.py", "x")._actions
        for opt in action.option_strings
    }
    parser = Command().create_parser("manage.py", "runpushserver")
    ours = {
        opt for action in parser._actions for opt in action.option_strings
        if opt.startswith("--") and opt not in django_own
    }
    assert ours  # the parser was read
    missing = sorted(o for o in ours if f"`{o}" not in page)
    assert not missing, f"docs/command.md does not describe {missing}"


def test_channel_info_examples_are_real_output():
    info = ChannelInfo("news", 2, 1700000000.0, 1, MessageId(1700000005, 1))
    page = read("protocol.md")
    for fmt in ("json", "xml", "yaml"):
        rendered = render_channel_info(info, fmt, now=1700000007.0).decode()
        assert rendered.strip() in page, f"the {fmt} example in docs/protocol.md is stale"
    plain = render_channel_info(info, "plain", now=1700000007.0).decode().replace("\r\n", "\n")
    assert plain.strip() in page


# -- transports.md: the wire examples come from the encoders, the tables from the constants --


def test_stream_examples_are_real_output():
    from pushserver.message import Message, MessageId
    from pushserver.protocol import format_compound_id
    from pushserver.transports import sse, websocket
    from pushserver.transports.streaming import Gap

    page = read("transports.md")
    tick = Message(MessageId(1795486714, 1), b"two\nlines", "text/plain", event="tick")
    examples = {
        "SSE greeting": sse._HELLO.decode(),
        "SSE event": sse.encode_event(tick).decode(),
        "gap": Gap("news", MessageId(1795486714, 0), MessageId(1795486732, 0)).json(),
        "compound id": "id: " + format_compound_id(
            [MessageId(1795486733, 1), MessageId(1795486734, 0)], 1
        ),
        "WebSocket text frame": websocket.encode_frame(
            "sport2",
            Message(
                MessageId(1795486753, 0), b'{"type":"score","home":2}', "application/json",
                event="goal",
            ),
        )["text"],
        "WebSocket binary frame": repr(
            websocket.encode_frame(
                "news", Message(MessageId(1795486753, 0), b"\x89PNG\r\n", "image/png")
            )["bytes"]
        ),
        "WebSocket plain frame": websocket.encode_plain(
            Message(MessageId(1795486753, 0), b'{"type":"score","home":2}', "application/json")
        )["text"],
        "WebSocket ws+meta.nchan frame": websocket.encode_nchan(
            Message(MessageId(1795486753, 0), b'{"type":"score","home":2}', "application/json")
        )["text"],
        "pong": websocket._PONG["text"],
        "ping": websocket._PING["text"],
    }
    stale = [what for what, text in examples.items() if text.strip() not in page]
    assert not stale, f"docs/transports.md shows other bytes than the code sends: {stale}"


def test_websocket_close_codes_match_the_code():
    from pushserver.transports import websocket

    codes = {
        value for name, value in vars(websocket).items()
        if name.startswith("CLOSE_") and isinstance(value, int) and value >= 1000
    }
    page = read("transports.md")
    section = page.split("### Close codes", 1)[1].split("\n#", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", section, re.MULTILINE)}
    missing, extra = sorted(codes - documented), sorted(documented - codes)
    assert not missing, f"close codes missing from the table: {missing}"
    assert not extra, f"the table lists codes the server never sends: {extra}"


def test_stream_names_and_limits_are_documented():
    from pushserver import protocol
    from pushserver.config import TRANSPORTS
    from pushserver.transports import sse

    page = read("transports.md")
    for text in (
        sse.GAP_EVENT, sse.DELETED_EVENT, f"retry: {sse.RETRY_MS}",
        f"Up to {protocol.MAX_CHANNELS} channels", "last_event_id", "Last-Event-ID",
    ):
        assert text in page, f"docs/transports.md does not mention {text!r}"
    for name in TRANSPORTS:
        assert f"`{name}`" in read("command.md"), f"docs/command.md misses --transport {name}"
        assert f'"{name}"' in read("settings.md"), f"docs/settings.md misses transport {name!r}"


def test_template_tags_are_documented():
    from pushserver.templatetags.pushserver import register

    page = read("tutorial.md")
    missing = sorted(tag for tag in register.tags if f"{{% {tag}" not in page)
    assert not missing, f"docs/tutorial.md does not show {missing}"


def test_updates_js_api_is_documented():
    """Every option, onError kind, transport and $.updates function of updates.js."""
    script = (ROOT / "pushserver" / "static" / "pushserver" / "updates.js").read_text("utf-8")
    page = read("tutorial.md")
    options = re.search(r"var options = \{(.*?)\n    \};", script, re.DOTALL)
    api = re.search(r"\$\.updates = \{(.*?)\n    \};", script, re.DOTALL)
    kinds = re.search(r"kind is (.*?)\n\s*onError", script, re.DOTALL)
    assert options and api and kinds, "updates.js changed shape: update this test"
    names = set(re.findall(r"^\s{8}(\w+):", options.group(1), re.MULTILINE))
    names |= set(re.findall(r"^\s{8}(\w+):", api.group(1), re.MULTILINE)) - {"version"}
    names |= set(re.findall(r"transports\.(\w+) = ", script))
    assert {"retryDelay", "onError", "subscribe", "longpoll"} <= names  # the scan worked
    missing = sorted(n for n in names if not re.search(rf"[`'.]{n}\b", page))
    assert not missing, f"docs/tutorial.md does not describe updates.js's {missing}"
    kinds_missing = sorted(
        k for k in re.findall(r"'(\w+)'", kinds.group(1)) if f"`'{k}'`" not in page
    )
    assert not kinds_missing, f"docs/tutorial.md does not list onError kinds {kinds_missing}"


def test_no_fenced_code_inside_lists():
    """Python-Markdown's fenced_code only sees fences at the start of a line: an indented one
    (in a list or a definition) renders as inline code. Indent the code block instead."""
    indented = [
        f"{page.name}:{number}"
        for page in sorted(DOCS.glob("*.md"))
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r" +```", line)
    ]
    assert not indented, f"fenced code indented (renders as text) at {indented}"
