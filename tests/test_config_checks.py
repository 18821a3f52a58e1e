"""PUSH_SERVER: the original's whole schema, and a system check error for each mistake."""

import io
from pathlib import Path

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from pushserver.config import DEFAULT_LOCATIONS, STORE_DEFAULTS, HostConfig, load, parse
from pushserver.exceptions import ConfigurationError
from pushserver.settings import get_config
from pushserver.testing import PushServerProcess, free_port
from pushserver.utils.updates import publisher_url, subscriber_url
from tests.project.helpers import pushserver_messages

ROOT = Path(__file__).resolve().parent.parent

#: docs/installation.rst of the original, as users have it in their settings today.
DOCUMENTED_EXAMPLE = {
    "port": 8001,
    "address": "127.0.0.1",
    "publisher_host": {"location": "127.0.0.1:8001", "secure": True},
    "subscriber_host": {"location": "127.0.0.1:8001", "secure": False},
    "store": {"type": "memory", "min_messages": 0, "max_messages": 100, "message_timeout": 10},
    "locations": (
        {
            "type": "subscriber",
            "url": r"/updates/([^/]+)",
            "polling": "long",
            "create_on_get": True,
            "allow_origin": "http://127.0.0.1:8000",
            "allow_credentials": True,
            "passthrough": "http://127.0.0.1:8000/passthrough",
        },
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    ),
}


def only(messages):
    assert len(messages) == 1, messages
    return messages[0]


# -- the schema --------------------------------------------------------------------------


def test_defaults():
    config, problems = parse({})
    assert problems == []
    assert (config.port, config.address, config.servername) == (None, None, None)
    assert list(config.stores) == ["default"]
    assert config.stores["default"].type == "memory"
    assert config.stores["default"].options == {
        "min_messages": 0,
        "max_messages": 0,
        "message_timeout": 0,
        # Bounded by default (docs/topics.md#bounded-memory).
        "channel_timeout": 60.0,
        "keep_publisher_channels": True,
        "memory_limit": 64 * 1024 * 1024,
        "max_channels": 100_000,
        "idempotency_window": 300,
    }
    publisher, subscriber = config.locations
    assert (publisher.type, publisher.pattern) == ("publisher", "/publisher/(.+)")
    assert (subscriber.type, subscriber.pattern) == ("subscriber", "/subscriber/(.+)")
    assert publisher.create_on_post is True
    assert (subscriber.polling, subscriber.create_on_get) == ("long", False)
    assert (subscriber.allow_origin, subscriber.allow_credentials) == ("*", False)
    assert (subscriber.passthrough, subscriber.timeout) == (None, 0)
    assert [dict(d) for d in DEFAULT_LOCATIONS] == [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/"},
    ]


def test_documented_example_is_accepted_as_is():
    config = load(DOCUMENTED_EXAMPLE)
    assert (config.port, config.address) == (8001, "127.0.0.1")
    assert config.publisher_host == HostConfig("127.0.0.1:8001", True)
    assert config.subscriber_host == HostConfig("127.0.0.1:8001", False)
    assert config.stores["default"].options == {
        "min_messages": 0,
        "max_messages": 100,
        "message_timeout": 10,
        "channel_timeout": 60.0,
        "keep_publisher_channels": True,
        "memory_limit": 64 * 1024 * 1024,
        "max_channels": 100_000,
        "idempotency_window": 300,
    }
    subscriber, publisher = config.locations
    assert subscriber.regex.match("/updates/abc").group(1) == "abc"
    assert subscriber.regex.match("/updates/a/b") is None
    assert (subscriber.create_on_get, subscriber.allow_credentials) == (True, True)
    assert subscriber.passthrough == "http://127.0.0.1:8000/passthrough"
    assert publisher.regex.match("/send-update/x").group(1) == "x"
    assert config.first("publisher") is publisher
    assert pushserver_messages(DOCUMENTED_EXAMPLE) == []


def test_every_original_key():
    config = load(
        {
            "port": 9000,
            "address": "::1",
            "servername": "push",
            "store": {
                "mem": {
                    "type": "memory",
                    "min_messages": 1,
                    "max_messages": 5,
                    "message_timeout": 2.5,
                },
                "red": {"type": "redis", "host": "h", "port": 1, "database": 2, "key_prefix": "p:"},
            },
            "locations": [
                {
                    "type": "publisher",
                    "prefix": "/p/",
                    "store": "red",
                    "create_on_post": False,
                    "allow_origin": "*",
                    "allow_credentials": False,
                },
                {
                    "type": "subscriber",
                    "prefix": "/s/",
                    "store": "mem",
                    "polling": "interval",
                    "create_on_get": True,
                    "allow_origin": "https://a.example",
                    "allow_credentials": True,
                    "passthrough": "https://a.example/pt",
                },
            ],
            "publisher_host": {"location": "push.example", "secure": True},
            "subscriber_host": {"location": "push.example:8443"},
        }
    )
    assert config.servername == "push"
    assert config.stores["mem"].options["message_timeout"] == 2.5
    assert config.stores["red"].options["key_prefix"] == "p:"
    assert config.stores["red"].options["database"] == 2
    publisher, subscriber = config.locations
    assert (publisher.store, publisher.create_on_post) == ("red", False)
    assert (subscriber.store, subscriber.polling) == ("mem", "interval")
    assert config.publisher_host.scheme == "https"
    assert config.subscriber_host == HostConfig("push.example:8443", False)


def test_legacy_string_hosts():
    config = load({"publisher_host": "127.0.0.1:8001", "subscriber_host": "push.example"})
    assert config.publisher_host == HostConfig("127.0.0.1:8001", False)
    assert config.subscriber_host == HostConfig("push.example", False)


def test_url_wins_over_prefix_and_matches_the_whole_path():
    location = load(
        {
            "locations": [
                {"type": "subscriber", "url": r"/u/(\w+)", "prefix": "/ignored/"},
            ]
        }
    ).locations[0]
    assert location.pattern == r"/u/(\w+)"
    assert location.regex.match("/u/abc").group(1) == "abc"
    assert location.regex.match("/u/abc/more") is None
    assert location.regex.match("/ignored/abc") is None


def test_prefix_ids_may_contain_slashes():
    location = load({"locations": [{"type": "subscriber", "prefix": "/updates/"}]}).locations[0]
    assert location.regex.match("/updates/a/b").group(1) == "a/b"


def test_load_raises_with_every_problem():
    with pytest.raises(ConfigurationError) as info:
        load({"prot": 1, "store": {"type": "disk"}})
    ids = {problem.id for problem in info.value.problems}
    assert ids == {"pushserver.E002", "pushserver.E015"}


def test_settings_are_cached_and_reset_by_override_settings():
    with override_settings(PUSH_SERVER={"servername": "one"}):
        assert get_config().servername == "one"
        assert get_config() is get_config()
        with override_settings(PUSH_SERVER={"servername": "two"}):
            assert get_config().servername == "two"
        assert get_config().servername == "one"


# -- system checks -----------------------------------------------------------------------


def test_unknown_top_level_key():
    message = only(pushserver_messages({"prot": 8001}))
    assert isinstance(message, checks.Error)
    assert message.id == "pushserver.E002"
    assert message.msg.startswith("PUSH_SERVER['prot']: unknown key 'prot'")
    assert "did you mean 'port'?" in message.hint


def test_unknown_location_key():
    message = only(
        pushserver_messages(
            {
                "locations": [
                    {"type": "subscriber", "prefix": "/s/", "create_on_gte": True},
                ]
            }
        )
    )
    assert message.id == "pushserver.E037"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['create_on_gte']: unknown key")
    assert "did you mean 'create_on_get'?" in message.hint


def test_unknown_store_option():
    message = only(pushserver_messages({"store": {"type": "memory", "max_message": 3}}))
    assert message.id == "pushserver.E013"
    assert "PUSH_SERVER['store']['max_message']" in message.msg
    assert "max_messages" in message.hint


def test_key_of_the_other_location_type():
    message = only(
        pushserver_messages(
            {
                "locations": [
                    {"type": "publisher", "prefix": "/p/", "create_on_get": True},
                ]
            }
        )
    )
    assert message.id == "pushserver.E036"
    assert "'create_on_get' does not apply to publisher locations" in message.msg


@pytest.mark.parametrize(("url", "groups"), [(r"/updates/[^/]+", 0), (r"/updates/(\w+)/(\w+)", 2)])
def test_regex_without_exactly_one_group(url, groups):
    message = only(pushserver_messages({"locations": [{"type": "subscriber", "url": url}]}))
    assert message.id == "pushserver.E034"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['url']: must have exactly one group")
    assert f"has {groups}" in message.msg
    assert "(?:...)" in message.hint


def test_regex_that_does_not_compile():
    message = only(pushserver_messages({"locations": [{"type": "publisher", "url": r"/p/(x"}]}))
    assert message.id == "pushserver.E033"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['url']: is not a valid regular")


def test_location_without_url_or_prefix():
    message = only(pushserver_messages({"locations": [{"type": "publisher"}]}))
    assert message.id == "pushserver.E031"
    assert "'prefix'" in message.hint


def test_unknown_store_type():
    message = only(pushserver_messages({"store": {"type": "disk"}}))
    assert message.id == "pushserver.E015"
    assert message.msg == "PUSH_SERVER['store']['type']: unknown store type 'disk'"
    assert "'memory', 'redis'" in message.hint


def test_location_naming_a_store_that_is_not_configured():
    message = only(
        pushserver_messages(
            {
                "store": {"main": {"type": "memory"}},
                "locations": [{"type": "publisher", "prefix": "/p/", "store": "mian"}],
            }
        )
    )
    assert message.id == "pushserver.E038"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['store']: names the store 'mian'")
    assert "'main'" in message.hint


def test_location_without_store_when_stores_are_named():
    message = only(
        pushserver_messages(
            {
                "store": {"main": {"type": "memory"}},
                "locations": [{"type": "publisher", "prefix": "/p/"}],
            }
        )
    )
    assert message.id == "pushserver.E038"
    assert "'default'" in message.msg


def test_store_type_missing():
    message = only(
        pushserver_messages(
            {
                "store": {"main": {"max_messages": 3}},
                "locations": [{"type": "publisher", "prefix": "/p/", "store": "main"}],
            }
        )
    )
    assert message.id == "pushserver.E012"
    assert "PUSH_SERVER['store']['main']['type']" in message.msg


def test_store_backend_that_is_not_a_backend():
    message = only(pushserver_messages({"store": {"type": "collections.OrderedDict"}}))
    assert message.id == "pushserver.E017"
    message = only(pushserver_messages({"store": {"type": "nowhere.to.be.Found"}}))
    assert message.id == "pushserver.E016"


def test_wildcard_origin_with_credentials():
    message = only(
        pushserver_messages(
            {
                "locations": [
                    {"type": "subscriber", "prefix": "/s/", "allow_credentials": True},
                ]
            }
        )
    )
    assert message.id == "pushserver.E042"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['allow_origin']: '*' cannot")
    assert "exact origin" in message.hint


@pytest.mark.parametrize(
    ("location", "code", "key"),
    [
        ({"polling": "short"}, "E039", "polling"),
        ({"create_on_get": "yes"}, "E040", "create_on_get"),
        ({"allow_origin": ""}, "E041", "allow_origin"),
        ({"passthrough": "/passthrough"}, "E043", "passthrough"),
        ({"timeout": -1}, "E044", "timeout"),
        ({"transports": ["pigeon"]}, "E047", "transports"),
    ],
)
def test_bad_subscriber_values(location, code, key):
    message = only(
        pushserver_messages(
            {
                "locations": [
                    {"type": "subscriber", "prefix": "/s/", **location},
                ]
            }
        )
    )
    assert message.id == f"pushserver.{code}"
    assert message.msg.startswith(f"PUSH_SERVER['locations'][0]['{key}']: ")
    assert message.hint


@pytest.mark.parametrize(
    ("push_server", "code", "key"),
    [
        ([], "E001", "PUSH_SERVER"),
        ({"port": "8001"}, "E003", "PUSH_SERVER['port']"),
        ({"port": 70000}, "E003", "PUSH_SERVER['port']"),
        ({"address": 127}, "E004", "PUSH_SERVER['address']"),
        ({"servername": 1}, "E005", "PUSH_SERVER['servername']"),
        ({"max_message_size": -1}, "E008", "PUSH_SERVER['max_message_size']"),
        ({"store": "memory"}, "E010", "PUSH_SERVER['store']"),
        (
            {"store": {"type": "memory", "max_messages": -1}},
            "E014",
            "PUSH_SERVER['store']['max_messages']",
        ),
        (
            {"store": {"type": "memory", "message_timeout": "1h"}},
            "E014",
            "PUSH_SERVER['store']['message_timeout']",
        ),
        ({"publisher_host": 8001}, "E020", "PUSH_SERVER['publisher_host']"),
        (
            {"subscriber_host": {"location": "http://x/"}},
            "E022",
            "PUSH_SERVER['subscriber_host']['location']",
        ),
        ({"locations": "/updates/"}, "E030", "PUSH_SERVER['locations']"),
        (
            {"locations": [{"type": "sub", "prefix": "/s/"}]},
            "E035",
            "PUSH_SERVER['locations'][0]['type']",
        ),
        (
            {"locations": [{"type": "publisher", "prefix": "/p/", "max_message_size": 1.5}]},
            "E045",
            "PUSH_SERVER['locations'][0]['max_message_size']",
        ),
    ],
)
def test_other_mistakes(push_server, code, key):
    message = only(pushserver_messages(push_server))
    assert message.id == f"pushserver.{code}"
    assert message.msg.startswith(f"{key}: ")
    assert message.hint


#: A location with a W-level problem: '*' beside other origins changes nothing (W080).
WARNED_LOCATION = {"type": "subscriber", "prefix": "/w/", "allow_origin": ["*", "http://a.example"]}
W080_LINE = (
    "?: (pushserver.W080) PUSH_SERVER['locations'][1]['allow_origin']: '*' allows every "
    "origin, so the other origins listed with it change nothing"
)


def run_check(push_server, *args):
    """``manage.py check`` with ``push_server``: (stdout, stderr); raises SystemCheckError."""
    out, err = io.StringIO(), io.StringIO()
    with override_settings(PUSH_SERVER=push_server):
        call_command("check", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_check_command_fails_on_a_bad_setting_and_reports_its_warnings_too():
    bad = {"locations": [{"type": "subscriber", "url": "/x/(a)(b)"}, WARNED_LOCATION]}
    with pytest.raises(SystemCheckError) as info:
        run_check(bad)
    report = str(info.value)
    errors, _, warnings = report.partition("\nWARNINGS:\n")
    assert "ERRORS:\n?: (pushserver.E034) PUSH_SERVER['locations'][0]['url']: " in errors
    assert "pushserver.W080" not in errors
    assert warnings.startswith(W080_LINE)
    assert "System check identified 2 issues (0 silenced)." in report


#: Where send_update and {% channel_url %} find the push server (else W121, W123).
HOSTS = {
    "publisher_host": {"location": "127.0.0.1:8001"},
    "subscriber_host": {"location": "127.0.0.1:8001"},
}


def test_check_command_reports_warnings_and_passes():
    warned = {"locations": [{"type": "publisher", "prefix": "/p/"}, WARNED_LOCATION], **HOSTS}
    out, err = run_check(warned)
    assert out == ""
    assert err == (
        "System check identified some issues:\n\nWARNINGS:\n"
        f"{W080_LINE}\n"
        "\tHINT: Use '*' alone, or list only the exact origins that may read responses.\n\n"
        "System check identified 1 issue (0 silenced).\n"
    )
    # A deployment that fails on warnings (check --fail-level WARNING) fails on this one.
    with pytest.raises(SystemCheckError) as info:
        run_check(warned, "--fail-level", "WARNING")
    assert W080_LINE in str(info.value)


def test_check_command_passes_on_the_default_with_hosts():
    assert run_check(HOSTS) == ("System check identified no issues (0 silenced).\n", "")


def test_runpushserver_refuses_to_start_with_a_bad_setting():
    server = PushServerProcess(
        "tests.project.settings",
        push_server={
            "locations": [
                {"type": "subscriber", "prefix": "/s/", "allow_credentials": True},
            ]
        },
        cwd=str(ROOT),
    )
    with pytest.raises(RuntimeError) as info:
        server.start()
    output = str(info.value)
    assert "runpushserver exited with 1" in output
    assert "pushserver.E042" in output
    assert "PUSH_SERVER['locations'][0]['allow_origin']" in output
    assert "running at" not in output


# -- first use: send_update and {% channel_url %} need a location and a host -----------------


def first_use(push_server):
    """The first-use warnings (W120-W124) for ``push_server``, as (id, message, hint)."""
    return [(m.id, m.msg, m.hint) for m in pushserver_messages(push_server, first_use=True)]


def test_the_default_warns_that_send_update_and_channel_url_have_no_host():
    found = first_use({})
    assert [i for i, _, _ in found] == ["pushserver.W121", "pushserver.W123"]
    (_, message, hint), (_, sub_message, sub_hint) = found
    assert message.startswith("PUSH_SERVER['publisher_host']: not set, so send_update()")
    assert "'publisher_host': {'location': '127.0.0.1:8001', 'secure': False}" in hint
    assert sub_message.startswith("PUSH_SERVER['subscriber_host']: not set, so {% channel_url")
    assert "'subscriber_host': {'location': '127.0.0.1:8001'" in sub_hint
    # The warnings describe what really happens: both URL builders fail without a host...
    with override_settings(PUSH_SERVER={}):
        with pytest.raises(ValueError, match="publisher_host"):
            publisher_url("news")
        with pytest.raises(ValueError, match="subscriber_host"):
            subscriber_url("news")
    # ...and work once the hints are followed.
    assert first_use(HOSTS) == []
    with override_settings(PUSH_SERVER=HOSTS):
        assert publisher_url("news") == "http://127.0.0.1:8001/publisher/news"
        assert subscriber_url("news") == "http://127.0.0.1:8001/subscriber/news"


def test_the_legacy_port_is_a_host():
    """django-pushserver <= 0.2.2 built URLs from 'port' (and 'address'): no warning."""
    assert first_use({"port": 8005}) == []


def test_no_publisher_location():
    locations = [{"type": "subscriber", "prefix": "/s/"}]
    ((check_id, message, hint),) = first_use({"locations": locations, **HOSTS})
    assert check_id == "pushserver.W120"
    assert "no publisher location, so send_update() has nowhere to publish" in message
    assert "{'type': 'publisher', 'prefix': '/publisher/'}" in hint
    with (
        override_settings(PUSH_SERVER={"locations": locations, **HOSTS}),
        pytest.raises(ValueError, match="no publisher location"),
    ):
        publisher_url("news")


def test_no_subscriber_location():
    locations = [{"type": "publisher", "prefix": "/p/"}]
    ((check_id, message, hint),) = first_use({"locations": locations, **HOSTS})
    assert check_id == "pushserver.W122"
    assert "no subscriber location, so {% channel_url %} fails" in message
    assert "{'type': 'subscriber', 'prefix': '/subscriber/'}" in hint


def test_a_url_that_cannot_be_reversed():
    """One capturing group (valid for matching), but an alternation outside it: Django's
    reversal gives no path, and the URL builders would raise at first use."""
    locations = [
        {"type": "subscriber", "url": r"/u/(?:a|b)/([^/]+)"},
        {"type": "publisher", "url": r"/p/(?:a|b)/([^/]+)"},
        {"type": "publisher", "url": r"/ignored/(?:a|b)/([^/]+)"},  # not the first one
    ]
    found = first_use({"locations": locations, **HOSTS})
    assert [i for i, _, _ in found] == ["pushserver.W124", "pushserver.W124"]
    assert found[0][1].startswith(
        "PUSH_SERVER['locations'][1]['url']: '/p/(?:a|b)/([^/]+)' cannot be reversed"
    )
    assert "send_update()" in found[0][1] and "{% channel_url %}" in found[1][1]
    assert "r'/updates/([^/]+)'" in found[0][2]
    with (
        override_settings(PUSH_SERVER={"locations": locations, **HOSTS}),
        pytest.raises(ValueError, match="Non-reversible"),
    ):
        subscriber_url("news")
    # An alternation inside the channel id's group reverses fine.
    inside = [{"type": "subscriber", "url": r"/u/(a|b)"}, {"type": "publisher", "prefix": "/p/"}]
    assert first_use({"locations": inside, **HOSTS}) == []


def test_publishing_via_the_backend_needs_no_publisher_host():
    push_server = {
        "publish_via": "backend",
        "store": {"type": "redis", "port": free_port()},  # not reached: no deploy checks
        "subscriber_host": {"location": "push.example.com", "secure": True},
    }
    assert first_use(push_server) == []


def test_no_first_use_warnings_while_the_settings_have_errors():
    assert [m.id for m in pushserver_messages({"port": "x"}, first_use=True)] == ["pushserver.E003"]


def test_runpushserver_knows_its_own_host():
    """Inside runpushserver send_update and {% channel_url %} use the address it listens on,
    so it does not warn; `manage.py check`, for the Django site, does."""
    _out, err = run_check({})
    assert "pushserver.W121" in err and "pushserver.W123" in err
    with PushServerProcess("tests.project.settings", push_server={}, cwd=str(ROOT)) as server:
        assert "pushserver.W12" not in server.log


# -- store bounds (channel_timeout, budgets) -----------------------------------------------------

STORE = "PUSH_SERVER['store']"


@pytest.mark.parametrize(
    ("options", "code", "key"),
    [
        ({"channel_timeout": -1}, "E100", "channel_timeout"),
        ({"channel_timeout": "60"}, "E100", "channel_timeout"),
        ({"keep_publisher_channels": "yes"}, "E101", "keep_publisher_channels"),
        ({"channel_timeout": float("nan")}, "E100", "channel_timeout"),
        ({"channel_timeout": float("inf")}, "E100", "channel_timeout"),
        ({"channel_timeout": 1e30}, "E100", "channel_timeout"),
        ({"memory_limit": -1}, "E102", "memory_limit"),
        ({"memory_limit": "64M"}, "E102", "memory_limit"),
        ({"memory_limit": 1.5e6}, "E102", "memory_limit"),
        ({"memory_limit": True}, "E102", "memory_limit"),
        ({"memory_limit": 1000}, "E103", "memory_limit"),
        ({"max_channels": -5}, "E104", "max_channels"),
        ({"max_channels": None}, "E104", "max_channels"),
    ],
)
def test_bad_store_bounds_name_the_key(options, code, key):
    message = only(pushserver_messages({"store": {"type": "memory", **options}}))
    assert message.id == f"pushserver.{code}"
    assert message.msg.startswith(f"{STORE}[{key!r}]: ")
    assert message.hint


def test_a_budget_below_one_message_counts_the_largest_publisher_location():
    store = {"type": "memory", "memory_limit": 200_000}
    publisher = {"type": "publisher", "prefix": "/p/", "max_message_size": 100_000}
    assert pushserver_messages({"store": store, "locations": [publisher]}) == []
    bigger = {**publisher, "prefix": "/q/", "max_message_size": 300_000}
    message = only(pushserver_messages({"store": store, "locations": [publisher, bigger]}))
    assert message.id == "pushserver.E103"
    assert "300000" in message.msg
    assert "at least" in message.hint


def test_redis_store_bounds_are_checked_too():
    message = only(pushserver_messages({"store": {"type": "redis", "channel_timeout": -1}}))
    assert message.id == "pushserver.E100"
    message = only(
        pushserver_messages({"store": {"type": "redis", "channel_timeout": float("inf")}})
    )
    assert message.id == "pushserver.E100"
    assert "finite" in message.msg
    assert "memory_limit" not in STORE_DEFAULTS["redis"]  # Redis has its own: maxmemory


@pytest.mark.parametrize("name", ["memory_limit", "max_channels"])
def test_a_memory_budget_on_a_redis_store_is_refused_not_ignored(name):
    # Redis's budget is its own maxmemory (docs/redis.md#memory-and-expiry): a memory-store
    # budget written on a redis store would bound nothing, so it stops the server.
    message = only(pushserver_messages({"store": {"type": "redis", name: 1000}}))
    assert isinstance(message, checks.Error)
    assert message.id == "pushserver.E013"
    assert message.msg.startswith(f"{STORE}[{name!r}]: unknown key")


@pytest.mark.parametrize(
    "options",
    [
        {"memory_limit": 0},
        {"memory_limit": 0, "max_messages": 0, "message_timeout": 0, "min_messages": 3},
    ],
)
def test_unbounded_retention_is_a_warning_naming_the_settings(options):
    message = only(pushserver_messages({"store": {"type": "memory", **options}}))
    assert isinstance(message, checks.Warning)
    assert message.id == "pushserver.W100"
    assert message.msg.startswith(f"{STORE}: retention is unbounded")
    for name in ("max_messages", "message_timeout", "memory_limit"):
        assert name in message.hint


@pytest.mark.parametrize(
    "options",
    [
        {},  # the default budget
        {"memory_limit": 0, "max_messages": 10},
        {"memory_limit": 0, "message_timeout": 30},
    ],
)
def test_any_bound_silences_the_warning(options):
    assert pushserver_messages({"store": {"type": "memory", **options}}) == []
