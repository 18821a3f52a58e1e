"""What watching a connection decides (SendGuard's pure rules), with plain numbers: the
same methods drive the task-based watcher and the engine's callback-based one."""

import math

from pushserver.transports.streaming import SendGuard


def test_a_write_blocked_for_the_timeout_expires_the_guard():
    guard = SendGuard(5.0)
    assert not guard.expired(100.0)  # no write under way
    guard.started = 100.0
    assert not guard.expired(104.9)
    assert not guard.timed_out
    assert guard.expired(105.0)
    assert guard.timed_out


def test_the_next_look_is_the_write_deadline_or_one_timeout_from_now_or_the_keepalive():
    guard = SendGuard(5.0)
    assert guard.due(100.0) == 105.0  # idle: one timeout from now
    guard.started = 98.0
    assert guard.due(100.0) == 103.0  # the deadline of the write under way
    guard.pinged(100.0, 1.0)
    assert guard.due(100.0) == 101.0  # the keepalive comes first
    assert not guard.ping_due(100.5)
    assert guard.ping_due(101.0)


def test_without_a_timeout_or_keepalive_nothing_is_ever_due():
    guard = SendGuard(None)
    guard.pinged(100.0, 0.0)
    guard.started = 100.0
    assert guard.due(1e9) == math.inf
    assert not guard.expired(1e9)
    assert not guard.ping_due(1e9)
