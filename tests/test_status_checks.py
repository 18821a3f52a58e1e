"""Status locations in PUSH_SERVER: what they accept, and a system check for each mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pushserver import status
from pushserver.config import STATUS_INTERVAL, parse
from pushserver.status import COUNTERS
from tests.project.helpers import pushserver_messages

ROOT = Path(__file__).resolve().parent.parent


def problems(location: dict) -> list[tuple[str, str]]:
    push_server = {"locations": [{"type": "publisher", "prefix": "/publisher/"}, location]}
    return [(m.id, m.msg) for m in pushserver_messages(push_server)]


def test_a_status_location_and_its_defaults():
    config, found = parse({"locations": [{"type": "status", "prefix": "/status/"}]})
    assert found == []
    (location,) = config.locations
    assert location.type == "status"
    assert location.interval == STATUS_INTERVAL == 2.0
    assert location.allow_from is None  # the publisher's default: loopback and INTERNAL_IPS
    # The rest after the prefix may be empty: /status/ itself is the page.
    assert location.regex.match("/status/").group(1) == ""
    assert location.regex.match("/status/metrics").group(1) == "metrics"


def test_a_url_regex_and_options():
    config, found = parse(
        {
            "locations": [
                {"type": "status", "url": r"/_status/?(.*)", "allow_from": "*", "interval": 0},
            ]
        }
    )
    assert found == []
    (location,) = config.locations
    assert location.regex.match("/_status").group(1) == ""
    assert location.interval == 0
    assert location.allow_from == ("0.0.0.0/0", "::/0")


@pytest.mark.parametrize("interval", [-1, 0.05, "2", None, True])
def test_a_bad_interval_is_e070(interval):
    found = problems({"type": "status", "prefix": "/status/", "interval": interval})
    assert [i for i, _ in found] == ["pushserver.E070"]
    assert "['interval']: must be 0 or a number of seconds >= 0.1" in found[0][1]


@pytest.mark.parametrize("interval", [0, 0.1, 2, 30])
def test_good_intervals(interval):
    assert problems({"type": "status", "prefix": "/status/", "interval": interval}) == []


def test_keys_of_other_locations_do_not_apply():
    found = problems(
        {"type": "status", "prefix": "/status/", "store": "default", "polling": "long"}
    )
    assert [i for i, _ in found] == ["pushserver.E036", "pushserver.E036"]
    assert "'store' does not apply to status locations" in found[0][1]


def test_an_unknown_key_is_e037_with_a_suggestion():
    found = problems({"type": "status", "prefix": "/status/", "intervall": 2})
    assert [i for i, _ in found] == ["pushserver.E037"]
    assert "unknown key 'intervall'" in found[0][1]


def test_a_bad_allow_from_is_e052():
    found = problems({"type": "status", "prefix": "/status/", "allow_from": ["not an ip"]})
    assert [i for i, _ in found] == ["pushserver.E052"]


def test_a_status_location_needs_a_path():
    found = problems({"type": "status"})
    assert [i for i, _ in found] == ["pushserver.E031"]


def test_an_unknown_type_names_status_too():
    found = problems({"type": "statistics", "prefix": "/s/"})
    assert [i for i, _ in found] == ["pushserver.E035"]
    assert "'publisher', 'subscriber' or 'status'" in found[0][1]


def test_every_metric_and_json_field_is_documented():
    page = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    source = Path(status.__file__).read_text(encoding="utf-8")  # installed or the checkout's
    metrics = set(re.findall(r'"(pushserver_[a-z_]+)"', source))
    assert len(metrics) >= 16  # the scan found them
    missing = sorted(m for m in metrics if f"`{m}`" not in page)
    assert not missing, f"docs/observability.md does not list {missing}"
    fields = [name for name, _, _ in COUNTERS]
    fields += ["connections", "subscribers", "active_channels", "channels", "slow_disconnects"]
    missing = sorted(f for f in fields if f"`{f}`" not in page)
    assert not missing, f"docs/observability.md does not explain {missing}"
