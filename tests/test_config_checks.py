"""PUSH_SERVER: the original's whole schema, and a system check error for each mistake."""

import io
from pathlib import Path

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from pushserver.config import DEFAULT_LOCATIONS, HostConfig, load, parse
from pushserver.exceptions import ConfigurationError
from pushserver.settings import get_config
from pushserver.testing import PushServerProcess
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


def test_check_command_reports_warnings_and_passes():
    warned = {"locations": [{"type": "publisher", "prefix": "/p/"}, WARNED_LOCATION]}
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


def test_check_command_passes_on_the_default():
    assert run_check({}) == ("System check identified no issues (0 silenced).\n", "")


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
