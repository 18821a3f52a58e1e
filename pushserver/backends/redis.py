"""The Redis backend: channels shared by every push server process that uses one Redis.

Each channel lives in three keys, hash-tagged on the channel id so they share one Redis
Cluster slot (``<key_prefix>{<channel id>}:<part>``):

``:meta``
    a hash: ``created``, the last id (``lt``/``lg``), the newest evicted id (``et``/``eg``,
    for gap detection) and ``req`` (last requested).
``:msgs``
    a stream of the retained messages. A message id ``(time, tag)`` *is* the stream id
    ``<time>-<tag>``, so reading after a position is one ``XRANGE (<time>-<tag> + COUNT 1``.
``:subs``
    a hash of subscriber counts, one field per push server process (node), each with an
    expiry the node keeps prolonging.

Publishing is one Lua script: it reads the last id, takes the next one with Redis's own
clock (``TIME``, so every node shares one clock; same rule as
:meth:`~pushserver.message.MessageId.next_for`), appends the message, trims by
``max_messages`` / ``message_timeout`` / ``min_messages`` exactly as the memory backend
does, and ``PUBLISH``es the message on ``<key_prefix>{<channel id>}:live``. Being atomic, it
gives unique, ordered ids however many nodes publish at once, and Redis delivers the
messages on pub/sub in that same order. Its answer also describes the channel (messages,
subscribers, last requested: what the publisher answers with), so a publish is one round
trip. A subscriber opening a channel is one script as well: create it if asked, mark it
requested, read the first message after the subscriber's position (a long poll that finds
its message waiting needs nothing more).

Every process keeps one pub/sub connection, read by one task. The first local subscriber
of a channel ``SUBSCRIBE``s it (and waits for Redis to confirm, so nothing published after
the subscriber's read of the buffer is missed); the last one leaving ``UNSUBSCRIBE``s. A
message reaches the hub only through pub/sub, even on the node that published it, so every
node sees one ordered stream per channel.

Faults: a command that fails (Redis down, restarting, loading) raises
:class:`~pushserver.exceptions.BackendUnavailable`, so publishers get 503 and nothing is
reported as accepted. Waiting subscribers stay waiting: the reader reconnects with capped
backoff, re-subscribes every channel and then delivers, in order, whatever was stored on
those channels after the last message it delivered, so no subscriber misses a message
published while pub/sub was down. Messages accepted before a Redis restart survive it only
if Redis persists them (``appendonly yes`` with ``appendfsync always``); this backend cannot
do better than Redis's own durability.

Past one Redis: with ``cluster`` the client is redis-py's ``RedisCluster``; a channel's keys
share a hash tag, so they live in one slot and its scripts run on that slot's primary;
live messages go over sharded pub/sub (``SPUBLISH`` in the scripts, ``SSUBSCRIBE`` on one
connection per primary, see :meth:`RedisBackend._read_shards`), so a message crosses only
its shard. With ``sentinels`` each new connection asks the sentinels for ``service``'s
primary, so reconnecting follows a failover. With ``wait_replicas`` a publish runs
``WAIT`` on the connection that ran its script and fails (503) unless enough replicas have
it. An idempotency key is a fourth key of the publish script,
``<key_prefix>{<channel id>}:idem:<key>`` (in the channel's slot), holding the first
publish's answer for ``idempotency_window`` seconds.

Limits: a publish whose reply is lost (the connection dropped after Redis ran the script)
is reported as 503 although it was stored; a client that retries publishes it twice,
unless it sends an idempotency key.
Subscriber counts of a process that died without closing its backend still count until
they expire, ``node_ttl`` (30) seconds later; they only affect 201/202 and channel info.

redis-py's asyncio client runs on asyncio (and uvloop) only, so this backend refuses to
open under trio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, OutOfMemoryError, RedisClusterException, RedisError

try:  # redis-py >= 7
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - older redis-py has no such thing
    MaintNotificationsConfig = None  # type: ignore[misc,assignment]

from .._async import asyncio_loop, run_shielded
from ..exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from ..message import ORIGIN, ChannelInfo, Message, MessageId
from .base import Backend, OpenResult, PublishResult, ReadResult
from .memory import DEFAULT_CHANNEL_TIMEOUT
from .redis_options import RedisOptions

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

logger = logging.getLogger("pushserver.backends.redis")

_MAX_ID_PART = 2**64 - 1  # a stream id is two unsigned 64-bit numbers
#: Positions remembered per subscribed channel as read clean (see _Listening.clean).
_MAX_CLEAN = 64
#: What a command can raise when Redis (or the cluster's topology) fails it.
_ERRORS = (RedisError, RedisClusterException)

# Shared by the scripts that trim: drop what max_messages and message_timeout say, keeping
# min_messages against the timeout (not against max_messages), as the memory backend does;
# remember the newest dropped id for gap detection. Entries store 't' (published_at) first.
_TRIM = """
local function trim(meta, msgs, now, max_messages, timeout, min_messages)
  local len = redis.call('XLEN', msgs)
  local drop = 0
  if max_messages > 0 and len > max_messages then drop = len - max_messages end
  local limit = len - min_messages
  if drop == 0 and (timeout <= 0 or limit <= 0) then return len end
  local deadline = now - timeout
  local last_dropped = nil
  local index = 0
  local start = '-'
  while true do
    local page = redis.call('XRANGE', msgs, start, '+', 'COUNT', 64)
    local stop = #page < 64
    for _, entry in ipairs(page) do
      if index < drop then
        last_dropped = entry[1]
      elseif timeout > 0 and index < limit and tonumber(entry[2][2]) <= deadline then
        drop = index + 1
        last_dropped = entry[1]
      else
        stop = true
        break
      end
      index = index + 1
    end
    if stop then break end
    start = '(' .. page[#page][1]
  end
  if drop > 0 then
    redis.call('XTRIM', msgs, 'MAXLEN', len - drop)
    local dash = string.find(last_dropped, '-', 1, true)
    redis.call('HSET', meta, 'et', string.sub(last_dropped, 1, dash - 1),
               'eg', string.sub(last_dropped, dash + 1))
  end
  return len - drop
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- channel_timeout (docs/redis.md#memory-and-expiry): a channel a subscriber created, or with
-- keep_publisher_channels off any channel, lives while its meta key has a TTL, which every
-- use only extends ('at least ms from now'): nothing here ever shortens a channel's life.
local function extend(ms, ...)
  for _, key in ipairs({...}) do
    local ttl = redis.call('PTTL', key)
    if ttl > 0 and ttl < ms then redis.call('PEXPIRE', key, ms) end
  end
end

-- After a publish: a publisher's channel is kept (PERSIST), unless keep_publisher_channels is
-- off, when it goes channel_timeout after its newest message expires (never, if messages
-- never expire).
local function settle(meta, msgs, subs, message_timeout, min_messages, timeout_ms, keep)
  if keep == '1' or tonumber(timeout_ms) == 0 or message_timeout <= 0 or min_messages > 0 then
    redis.call('PERSIST', meta)
    redis.call('PERSIST', msgs)
    redis.call('PERSIST', subs)
  else
    local ms = math.floor(message_timeout * 1000) + tonumber(timeout_ms)
    redis.call('PEXPIRE', meta, ms)
    redis.call('PEXPIRE', msgs, ms)
  end
end

-- Each node's field is '<count> <expires at>': a node that died without cleaning up stops
-- counting once its entry expires (live nodes keep extending theirs). With node, the node
-- asking counts its own subscribers as own (exact now) instead of its field (which keeps a
-- count that went down for up to the store's linger).
local function subscribers(subs, now, node, own)
  local total = 0
  if node then total = tonumber(own) end
  local fields = redis.call('HGETALL', subs)
  for i = 1, #fields, 2 do
    local value = fields[i + 1]
    local space = string.find(value, ' ', 1, true)
    if tonumber(string.sub(value, space + 1)) < now then
      redis.call('HDEL', subs, fields[i])
    elseif fields[i] ~= node then
      total = total + tonumber(string.sub(value, 1, space - 1))
    end
  end
  return total
end
"""

# KEYS: meta, msgs, subs[, idempotency key]. ARGV: create, content type, has event, event,
# body, max_messages, message_timeout, min_messages, live channel, PUBLISH or SPUBLISH,
# milliseconds the idempotency key is kept, then settle()'s channel_timeout in milliseconds
# and keep_publisher_channels, then this node's id and its subscriber count now (counted
# instead of its field). Returns {0} (no channel) or
# {1, time, tag, published_at, subscribers, <the channel's info, as _INFO gives it>};
# {2, ...the same} when the idempotency key was seen: the first publish's answer, nothing
# stored, and the channel's info now (none if it is gone). The info is what the publisher
# answers with: no second round trip for it.
_PUBLISH = (
    _TRIM
    + """
local meta, msgs, subs, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if seen then
  local first = redis.call('GET', seen)
  if first then
    local answer = {2}
    for part in string.gmatch(first, '%S+') do answer[#answer + 1] = part end
    if redis.call('EXISTS', meta) == 1 then
      local _, now = clock()
      local count = trim(meta, msgs, now, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
      local fields = redis.call('HMGET', meta, 'req', 'lt', 'lg')
      for _, part in ipairs({count, fields[1], fields[2], fields[3],
                             subscribers(subs, now, ARGV[14], ARGV[15])}) do
        answer[#answer + 1] = part
      end
    end
    return answer
  end
end
local seconds, now = clock()
local now_text = string.format('%.6f', now)
if redis.call('EXISTS', meta) == 0 then
  if ARGV[1] == '0' then return {0} end
  redis.call('HSET', meta, 'created', now_text)
end
local last = redis.call('HMGET', meta, 'lt', 'lg')
local id_time, id_tag = seconds, 0
if last[1] and tonumber(last[1]) >= seconds then
  id_time, id_tag = tonumber(last[1]), tonumber(last[2]) + 1
end
id_time = string.format('%d', id_time)
id_tag = string.format('%d', id_tag)
local content_type, event, body = ARGV[2], ARGV[4], ARGV[5]
if ARGV[3] == '1' then
  redis.call('XADD', msgs, id_time .. '-' .. id_tag, 't', now_text, 'c', content_type,
             'e', event, 'b', body)
else
  redis.call('XADD', msgs, id_time .. '-' .. id_tag, 't', now_text, 'c', content_type,
             'b', body)
end
redis.call('HSET', meta, 'lt', id_time, 'lg', id_tag)
local retained = trim(meta, msgs, now, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
settle(meta, msgs, subs, tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[12], ARGV[13])
local event_length = -1
if ARGV[3] == '1' then event_length = #event else event = '' end
redis.call(ARGV[10], ARGV[9], table.concat({'m', id_time, id_tag, now_text, #content_type,
           event_length}, ' ') .. '\\n' .. content_type .. event .. body)
local count = subscribers(subs, now, ARGV[14], ARGV[15])
if seen then
  redis.call('SET', seen, table.concat({id_time, id_tag, now_text, count}, ' '),
             'PX', ARGV[11])
end
return {1, id_time, id_tag, now_text, count,
        retained, redis.call('HGET', meta, 'req'), id_time, id_tag, count}
"""
)

# KEYS: meta, msgs. ARGV: XRANGE start ('' = nothing can follow), count, max_messages,
# message_timeout, min_messages. Returns {0} or {1, entries, evicted time, evicted tag}.
_READ = (
    _TRIM
    + """
local meta, msgs = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 0 then return {0} end
local _, now = clock()
trim(meta, msgs, now, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', msgs, ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
end
local evicted = redis.call('HMGET', meta, 'et', 'eg')
return {1, entries, evicted[1], evicted[2]}
"""
)

# KEYS: meta, msgs. ARGV: create ('1': create_on_get), now (created at, last requested),
# channel_timeout in ms, '1' to read, XRANGE start ('' = nothing can follow), max_messages,
# message_timeout, min_messages. A subscriber opening a channel, in one round trip: what
# create (publisher '0'), touch and, when asked, read do one after the other. Returns {0}
# (no channel, not created) or {1, created, entries, evicted time, evicted tag, last time,
# last tag}.
_OPEN = (
    _TRIM
    + """
local meta, msgs = KEYS[1], KEYS[2]
local created = 0
local timeout = tonumber(ARGV[3])
if redis.call('EXISTS', meta) == 0 then
  if ARGV[1] ~= '1' then return {0} end
  redis.call('HSET', meta, 'created', ARGV[2])
  created = 1
  if timeout > 0 then redis.call('PEXPIRE', meta, timeout) end
end
redis.call('HSET', meta, 'req', ARGV[2])
extend(timeout, meta)
if ARGV[4] ~= '1' then return {1, created} end
local _, now = clock()
trim(meta, msgs, now, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
local entries = {}
if ARGV[5] ~= '' then
  entries = redis.call('XRANGE', msgs, ARGV[5], '+', 'COUNT', 1)
end
local evicted = redis.call('HMGET', meta, 'et', 'eg', 'lt', 'lg')
return {1, created, entries, evicted[1], evicted[2], evicted[3], evicted[4]}
"""
)

# KEYS: meta, msgs, subs. ARGV: max_messages, message_timeout, min_messages, this node's id
# and its subscriber count now. Returns {0} or
# {1, messages, last requested, last time, last tag, subscribers}.
_INFO = (
    _TRIM
    + """
local meta, msgs, subs = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', meta) == 0 then return {0} end
local _, now = clock()
local count = trim(meta, msgs, now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local fields = redis.call('HMGET', meta, 'req', 'lt', 'lg')
return {1, count, fields[1], fields[2], fields[3], subscribers(subs, now, ARGV[4], ARGV[5])}
"""
)

# KEYS: meta, msgs, subs. ARGV: live channel, PUBLISH or SPUBLISH. Returns 1 if the
# channel existed.
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call(ARGV[2], ARGV[1], 'd')
return 1
"""

# KEYS: meta. ARGV: now, channel_timeout in ms. Touching a missing channel must not create it;
# touching an expiring one gives it channel_timeout from now at least.
_TOUCH = (
    _TRIM
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'req', ARGV[1])
  extend(tonumber(ARGV[2]), KEYS[1])
end
return 0
"""
)

# KEYS: meta. ARGV: created at, '1' when a publisher creates it, channel_timeout in ms, '1' for
# keep_publisher_channels. Returns 1 when it was created. A channel made by a subscriber (or by
# anyone, without keep_publisher_channels) expires channel_timeout after its last use; a
# publisher creating one a subscriber made takes it over (it is kept).
_CREATE = """
local created = redis.call('HSETNX', KEYS[1], 'created', ARGV[1])
local timeout = tonumber(ARGV[3])
if ARGV[2] == '1' and ARGV[4] == '1' then
  redis.call('PERSIST', KEYS[1])
elseif created == 1 and timeout > 0 then
  redis.call('PEXPIRE', KEYS[1], timeout)
end
return created
"""

# KEYS: meta, subs. ARGV: node, count, seconds to live, '1' to only extend the entry's life
# (the periodic refresh: it must not overwrite a newer count), channel_timeout in ms. Returns
# the channel's last id.
_SUBSCRIBERS = (
    _TRIM
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local _, now = clock()
local expires = string.format('%.3f', now + tonumber(ARGV[3]))
local count = ARGV[2]
if ARGV[4] == '1' then
  local value = redis.call('HGET', KEYS[2], ARGV[1])
  if value then count = string.sub(value, 1, string.find(value, ' ', 1, true) - 1) end
end
if tonumber(count) > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], count .. ' ' .. expires)
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
-- An expiring channel outlives its subscribers: by node_ttl + channel_timeout while this node
-- has some (refreshed every node_ttl / 3), by channel_timeout once the last one anywhere
-- left (exactly, for a channel never published to: nothing retained can be cut short).
local timeout = tonumber(ARGV[5])
if timeout > 0 then
  if tonumber(count) > 0 then
    extend(timeout + math.floor(tonumber(ARGV[3]) * 1000), KEYS[1])
  elseif redis.call('PTTL', KEYS[1]) > 0 and redis.call('HEXISTS', KEYS[1], 'lt') == 0
      and subscribers(KEYS[2], now) == 0 then
    redis.call('PEXPIRE', KEYS[1], timeout)
  else
    extend(timeout, KEYS[1])
  end
  if redis.call('PTTL', KEYS[1]) > 0 then
    redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
  end
end
return redis.call('HMGET', KEYS[1], 'lt', 'lg')
"""
)


def _cluster_memory(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A cluster's memory figures from its primaries' own: used and maxmemory summed (no
    maxmemory if any primary has none: that one is unbounded), and an evicting policy if
    any primary has one (what the warnings are about). A shard at its own maxmemory refuses
    its channels' publishes (507) while the sum still shows room."""
    limits = [int(node.get("maxmemory", 0)) for node in nodes]
    policies = {str(node.get("maxmemory_policy", "")) for node in nodes} - {""}
    evicting = sorted(policies - {"noeviction"})
    return {
        "used_memory": sum(int(node.get("used_memory", 0)) for node in nodes),
        "maxmemory": sum(limits) if limits and all(limits) else 0,
        "maxmemory_policy": evicting[0] if evicting else ("noeviction" if policies else ""),
    }


def _stream_id(raw: bytes) -> MessageId:
    time_part, _, tag_part = raw.partition(b"-")
    return MessageId(int(time_part), int(tag_part))


def _optional_id(time_part: bytes | None, tag_part: bytes | None) -> MessageId | None:
    if time_part is None or tag_part is None:
        return None
    return MessageId(int(time_part), int(tag_part))


def _range_start(after: MessageId) -> str:
    """The ``XRANGE`` start for "strictly after ``after``"; '' when nothing can follow."""
    if after.time <= 0 and after.tag < 0:
        return "-"
    if after.time > _MAX_ID_PART:
        return ""
    if after.tag < 0:
        return f"{after.time}-0"
    if after.tag >= _MAX_ID_PART:
        return "" if after.time == _MAX_ID_PART else f"{after.time + 1}-0"
    return f"({after.time}-{after.tag}"


def _entry_message(entry: list[Any]) -> Message:
    raw_id, raw_fields = entry
    fields = dict(zip(raw_fields[::2], raw_fields[1::2], strict=True))
    event = fields.get(b"e")
    return Message(
        _stream_id(raw_id),
        fields[b"b"],
        fields[b"c"].decode("latin-1"),
        event.decode("utf-8", "surrogateescape") if event is not None else None,
        float(fields[b"t"]),
    )


def _read_result(
    after: MessageId, entries: list[Any], evicted_time: bytes | None, evicted_tag: bytes | None
) -> ReadResult:
    """A read script's answer: the first entry after ``after``, and whether any was lost."""
    evicted = _optional_id(evicted_time, evicted_tag)
    # A position in second 0 means "from the beginning": nothing was missed.
    gap = evicted is not None and after.time > 0 and after < evicted
    return ReadResult(_entry_message(entries[0]) if entries else None, gap)


def _channel_info(
    channel_id: str,
    count: int,
    requested: bytes | None,
    last_time: bytes | None,
    last_tag: bytes | None,
    subscribers: int,
) -> ChannelInfo:
    """The info and publish scripts' description of a channel."""
    return ChannelInfo(
        channel_id=channel_id,
        messages=int(count),
        last_requested=float(requested) if requested is not None else None,
        subscribers=int(subscribers),
        last_message_id=_optional_id(last_time, last_tag),
    )


def _decode_live(payload: bytes) -> Message:
    """A message as the publish script sends it on pub/sub: a header line, then bytes."""
    header, _, rest = payload.partition(b"\n")
    _, id_time, id_tag, published_at, type_length, event_length = header.split(b" ")
    split = int(type_length)
    content_type = rest[:split].decode("latin-1")
    event = None
    if int(event_length) >= 0:
        end = split + int(event_length)
        event = rest[split:end].decode("utf-8", "surrogateescape")
        split = end
    return Message(
        MessageId(int(id_time), int(id_tag)),
        rest[split:],
        content_type,
        event,
        float(published_at),
    )


@dataclass(eq=False)
class _Listening:
    """This process listens to a channel: it has local subscribers."""

    #: Set once Redis confirmed the SUBSCRIBE on the current connection.
    ready: anyio.Event = field(default_factory=anyio.Event)
    #: Newest message handed to the hub; pub/sub repeats at or below it are dropped.
    delivered: MessageId | None = None
    #: The channel's last id when this process last told Redis its subscriber count:
    #: where catching up starts if nothing was delivered yet.
    known: MessageId | None = None
    #: After a reconnect: deliver what was stored while pub/sub was down.
    catch_up: bool = False
    #: Positions a subscriber's open read found nothing after while this subscription was
    #: live (confirmed): until something is delivered here (or the channel is deleted, or
    #: the connection lost), a read after one of them would find nothing either, and a
    #: message published since reaches the hub live. See :meth:`RedisBackend.read_after`.
    clean: set[MessageId] | None = None
    #: Counts what empties ``clean``: an open read records its position only if this did not
    #: change while it ran.
    epoch: int = 0
    #: ``latest`` is the channel's newest message id (None: it has none) as of a moment this
    #: subscription was live, kept up by every delivery: a subscriber at or past it has
    #: nothing to read (see :meth:`RedisBackend.open_channel`). Lost with a deletion or a
    #: reconnection, found again by a count written while subscribed.
    synced: bool = False
    latest: MessageId | None = None
    #: The newest message this process published on the channel: until it arrives on
    #: pub/sub, a subscriber here is sent to Redis to read it (read-your-writes).
    published: MessageId | None = None

    def forget_reads(self) -> None:
        self.clean = None
        self.epoch += 1

    def unsync(self) -> None:
        self.synced = False
        self.latest = self.published = None


class RedisBackend(RedisOptions, Backend):
    """Channels in Redis, shared by every push server process that points at it."""

    name = "redis"

    #: Seconds a command may take before the store counts as unavailable.
    command_timeout = 5.0
    connect_timeout = 2.0
    #: Connections a process opens for commands; more concurrent commands wait (up to
    #: ``command_timeout``) for one to be free.
    max_connections = 64
    #: Reconnect backoff of the pub/sub reader: first delay, doubling up to the cap.
    reconnect_min = 0.05
    reconnect_max = 2.0
    #: With nothing received for this long the reader pings Redis; silence for another
    #: period means the connection is dead (a half-open TCP connection never errors).
    heartbeat = 5.0
    #: Seconds a node's subscriber count outlives the node (if it dies without closing);
    #: a live node prolongs its counts every third of this.
    node_ttl = 30.0
    #: Lingering subscriptions a process keeps at most (see ``linger``): past it the one
    #: lingering longest is dropped at once, so channels nobody comes back to (an anonymous
    #: flood) hold a bounded number of subscriptions.
    max_lingering = 1000

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        database: int = 0,
        key_prefix: str = "",
        url: str | None = None,
        password: str | None = None,
        ssl: bool | dict[str, Any] = False,
        min_messages: int = 0,
        max_messages: int = 0,
        message_timeout: float = 0,
        node_ttl: float | None = None,
        channel_timeout: float = DEFAULT_CHANNEL_TIMEOUT,
        keep_publisher_channels: bool = True,
        cluster: bool = False,
        sentinels: list[str] | None = None,
        service: str | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        idempotency_window: float = 300,
        linger: float = 5.0,
        **options: Any,
    ) -> None:
        if node_ttl is not None:
            self.node_ttl = node_ttl
        super().__init__(
            host=host,
            port=port,
            database=database,
            key_prefix=key_prefix,
            url=url,
            password=password,
            ssl=ssl,
            min_messages=min_messages,
            max_messages=max_messages,
            message_timeout=message_timeout,
            channel_timeout=channel_timeout,
            keep_publisher_channels=keep_publisher_channels,
            cluster=cluster,
            sentinels=sentinels,
            service=service,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            idempotency_window=idempotency_window,
            linger=linger,
            **options,
        )
        #: Redis Cluster: channels spread over its shards by slot, live delivery on sharded
        #: pub/sub (SSUBSCRIBE/SPUBLISH), so a message crosses only its own shard.
        self.cluster = bool(cluster)
        #: Sentinel: ``["host:port", ...]`` of the sentinels and the ``service`` they watch;
        #: commands follow the primary they name.
        self.sentinels = list(sentinels or ())
        self.service = service
        #: Durable acknowledgement: a publish succeeds only once this many replicas have it
        #: (``WAIT``), within ``wait_timeout`` seconds.
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        #: Seconds an ``Idempotency-Key`` is remembered (0: keys are ignored).
        self.idempotency_window = idempotency_window
        #: Seconds a channel stays subscribed after its last local subscriber left, and this
        #: process's count of its subscribers in Redis stays at its recent peak (0: neither,
        #: every change is sent at once). A long poll that polls again at once then finds
        #: the subscription live and its count in place: no command for either.
        self.linger = linger
        self._publish_command = b"SPUBLISH" if self.cluster else b"PUBLISH"
        self._subscribe_command = "SSUBSCRIBE" if self.cluster else "SUBSCRIBE"
        self._unsubscribe_command = "SUNSUBSCRIBE" if self.cluster else "UNSUBSCRIBE"
        #: Cluster: a plain client per primary (name -> client) for the pub/sub connections
        #: and for publishing with WAIT, which must follow the write on its connection.
        self._nodes: dict[str, aioredis.Redis] = {}
        #: Cluster: set when a channel's slot is on a node the reader has no connection to.
        self._resync = anyio.Event()
        self.host = host
        self.port = port
        self.database = database
        self.url = url
        self.password = password
        self.ssl = ssl
        self.key_prefix = key_prefix
        self._prefix = key_prefix.encode()
        self.min_messages = min_messages
        self.max_messages = max_messages
        self.message_timeout = message_timeout
        self._limits = (max_messages, message_timeout, min_messages)
        # -- bounds (docs/redis.md#memory-and-expiry) -------------------------------------
        self.channel_timeout = channel_timeout
        self.keep_publisher_channels = keep_publisher_channels
        self._timeout_ms = int(channel_timeout * 1000)
        #: The create script's last two arguments, and the publish script's (its settle()).
        self._expiry = (self._timeout_ms, int(keep_publisher_channels))
        #: Redis's used_memory and maxmemory (0: none) as last read, None before.
        self.memory_used: int | None = None
        self.memory_limit: int | None = None
        self.memory_policy: str | None = None
        #: Writes Redis refused with OOM (at its maxmemory).
        self.refusals = {"maxmemory": 0}
        # ----------------------------------------------------------------------------------
        #: Identifies this process's field in every channel's ``:subs`` hash.
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._control = self._prefix + b"{pushserver}:ctl"
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._listening: dict[str, _Listening] = {}
        #: Per pub/sub channel: SUBSCRIBEs sent on the current connection, not yet confirmed.
        self._pending: dict[bytes, int] = {}
        #: This process's subscribers per channel, as they are now.
        self._local: dict[str, int] = {}
        #: This process's count per channel as written to Redis (or being written): raised
        #: at once, lowered by the sweeper to the highest local count of the last linger.
        self._shown: dict[str, int] = {}
        #: Channels whose local count is below the shown one: the highest local count
        #: since the sweeper last looked.
        self._peaks: dict[str, int] = {}
        #: Channels with no local subscriber still subscribed: when each started to linger
        #: (``time.monotonic()``), oldest first.
        self._lingering: dict[str, float] = {}
        #: When subscribers last opened channels without a command (see open_channel): the
        #: sweeper marks them requested in Redis; this process's own answers use them now.
        self._requested: dict[str, float] = {}
        #: Channels whose count is being written; True when it changed again meanwhile.
        self._writing: dict[str, bool] = {}
        #: Set when a channel's writer is done: what subscribers raising its count meanwhile
        #: wait for.
        self._written: dict[str, anyio.Event] = {}
        self._pubsub: Any = None  # the reader's current connection, when connected
        self._task_group: anyio.abc.TaskGroup | None = None
        self.connected = False
        #: Set by :meth:`ping`: Redis answered, but is not what the options say (a cluster
        #: node for a plain store, or the other way round).
        self.misconfigured = False
        self.last_error: str | None = None
        self.reconnects = 0
        self._stopping = False
        self._attempted = anyio.Event()

    # -- keys -------------------------------------------------------------------------------

    def _key(self, channel_id: str, part: bytes) -> bytes:
        return b"%s{%s}%s" % (self._prefix, channel_id.encode("utf-8", "surrogateescape"), part)

    def _keys(self, channel_id: str) -> list[bytes]:
        return [
            self._key(channel_id, b":meta"),
            self._key(channel_id, b":msgs"),
            self._key(channel_id, b":subs"),
        ]

    def _live(self, channel_id: str) -> bytes:
        return self._key(channel_id, b":live")

    def _channel_of(self, live: bytes) -> str:
        return live[len(self._prefix) + 1 : -len(b"}:live")].decode("utf-8", "surrogateescape")

    @property
    def address(self) -> str:
        """Where Redis is, for logs and errors (never with the password)."""
        if self.sentinels:
            return f"sentinel://{','.join(self.sentinels)}/{self.service}"
        if self.cluster:
            return "cluster " + self._single_address()
        return self._single_address()

    def _single_address(self) -> str:
        if self.url:
            scheme, _, rest = self.url.partition("://")
            return f"{scheme}://{rest.rpartition('@')[2]}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.database}"

    # -- lifecycle --------------------------------------------------------------------------

    def _client_options(self, *, timeout: float, connect_timeout: float) -> dict[str, Any]:
        # No retries (set by the caller): re-running a publish whose reply was lost would
        # publish it twice.
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "client_name": "pushserver",
        }
        if MaintNotificationsConfig is not None:
            # With them on ("auto"), the pool stops checking that an idle connection is
            # still open, and the first command after a Redis restart fails on a dead one.
            common["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        if self.password is not None:
            common["password"] = self.password
        ssl_options = self.ssl if isinstance(self.ssl, dict) else {}
        if self.url:
            if self.ssl and self.url.startswith("redis://"):
                raise ValueError("set a rediss:// url for TLS, not 'ssl' with a redis:// url")
            return {**common, **ssl_options}
        if self.ssl:
            common["ssl"] = True
            common.update(ssl_options)
        return {"host": self.host, "port": self.port, "db": self.database, **common}

    def _sentinel_addresses(self) -> list[tuple[str, int]]:
        addresses = []
        for entry in self.sentinels:
            host, _, port = str(entry).rpartition(":")
            addresses.append((host.strip("[]") or "127.0.0.1", int(port)))
        return addresses

    def _command_options(self) -> dict[str, Any]:
        options = self._client_options(
            timeout=self.command_timeout, connect_timeout=self.connect_timeout
        )
        options["retry"] = Retry(NoBackoff(), 0)
        return options

    def _plain_client(self, options: dict[str, Any]) -> aioredis.Redis:
        if self.url:
            return aioredis.Redis.from_url(self.url, **options)
        return aioredis.Redis(**options)

    def _client(self) -> Any:
        """The command client: a plain, cluster or sentinel-managed one."""
        options = self._command_options()
        if self.sentinels:
            return self._sentinel_client(options)
        if self.cluster:
            return self._cluster_client(options)
        client = self._plain_client(options)
        # redis-py's default pool fails a command outright ("Too many connections") once
        # 100 are busy, so a broadcast re-polled by more long-poll subscribers than that
        # got 503s. The same connections in a blocking pool make the excess wait instead.
        made = client.connection_pool
        pool = aioredis.BlockingConnectionPool(
            max_connections=self.max_connections,
            timeout=self.command_timeout,
            connection_class=made.connection_class,
            **made.connection_kwargs,
            # A pool option, not a connection's: see _client_options.
            **{k: v for k, v in options.items() if k == "maint_notifications_config"},
        )
        return aioredis.Redis.from_pool(pool)

    def _cluster_client(self, options: dict[str, Any]) -> Any:
        from redis.asyncio.cluster import RedisCluster

        options.pop("db", None)  # a cluster has database 0 only
        if self.url:
            return RedisCluster.from_url(self.url, **options)
        return RedisCluster(**options)

    def _sentinel_client(self, options: dict[str, Any]) -> aioredis.Redis:
        from redis.asyncio.sentinel import Sentinel

        for name in ("host", "port"):
            options.pop(name, None)
        sentinel = Sentinel(
            self._sentinel_addresses(),
            sentinel_kwargs={
                "socket_timeout": self.connect_timeout,
                "socket_connect_timeout": self.connect_timeout,
            },
            **options,
        )
        # Each new connection asks the sentinels where the primary is: after a failover the
        # reconnecting pub/sub reader and the pool's fresh connections find the new one.
        # ``service`` is a str with ``sentinels``: the system check (redis_options) says so.
        return sentinel.master_for(cast(str, self.service))

    def _node_client(self, node: Any) -> aioredis.Redis:
        """Cluster: a plain client of one primary (cached by its name)."""
        client = self._nodes.get(node.name)
        if client is None:
            client = self._plain_client(self._command_options())
            client.connection_pool.connection_kwargs.update(host=node.host, port=node.port, db=0)
            self._nodes[node.name] = client
        return client

    def ping(self, timeout: float = 1.0) -> str | None:
        """Connect and PING synchronously (the startup system check, outside any event
        loop); None when Redis answered as configured (a cluster for ``cluster``, a primary
        named by the sentinels for ``sentinels``), else why not."""
        import redis as syncredis
        from redis.retry import Retry as SyncRetry

        client: Any = None
        try:
            options = self._client_options(timeout=timeout, connect_timeout=timeout)
            options["retry"] = SyncRetry(NoBackoff(), 0)
            if self.sentinels:
                from redis.sentinel import Sentinel as SyncSentinel

                for name in ("host", "port"):
                    options.pop(name, None)
                sentinel = SyncSentinel(
                    self._sentinel_addresses(),
                    sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
                    **options,
                )
                client = sentinel.master_for(cast(str, self.service))
            elif self.cluster:
                options.pop("db", None)
                if self.url:
                    client = syncredis.RedisCluster.from_url(self.url, **options)
                else:
                    client = syncredis.RedisCluster(**options)
            elif self.url:
                client = syncredis.Redis.from_url(self.url, **options)
            else:
                client = syncredis.Redis(**options)
            self.misconfigured = False
            client.ping()
            if not self.cluster and client.info("cluster").get("cluster_enabled"):
                self.misconfigured = True
                return "it is a Redis Cluster node, and the store has no 'cluster': True"
        except (ValueError, RedisError, RedisClusterException) as exc:
            detail = str(exc).strip() or type(exc).__name__
            if "Cluster mode is not enabled" in detail:
                self.misconfigured = True
                return "it is not a Redis Cluster node, and the store has 'cluster': True"
            if self.sentinels and "No master found" in detail:
                # redis-py's message repeats every connection's settings; keep the cause.
                cause = detail.rpartition(" - ")[2] if " - " in detail else "no answer"
                return f"no sentinel named a primary for {self.service!r} ({cause})"
            return detail
        finally:
            if client is not None:
                client.close()
        return None

    async def open(self, *, listen: bool = True) -> None:
        """Connect. With ``listen=False`` the backend can only run commands (``send_update``
        publishing from Django): no pub/sub reader, no subscriber counts, nothing logged."""
        if asyncio_loop() is None:
            raise RuntimeError(
                "the redis store needs asyncio (redis-py's client runs on asyncio only): "
                "run the push server with --loop asyncio or --loop uvloop, not trio"
            )
        if self._redis is not None:
            return
        self._stopping = False
        self._redis = self._client()
        for name, source in (
            ("publish", _PUBLISH),
            ("read", _READ),
            ("info", _INFO),
            ("delete", _DELETE),
            ("touch", _TOUCH),
            ("subscribers", _SUBSCRIBERS),
            ("create", _CREATE),
            ("open", _OPEN),
        ):
            self._scripts[name] = self._redis.register_script(source)
        if self.cluster:
            try:
                await self._redis.initialize()  # learn the slots now; else on first use
            except _ERRORS as exc:
                logger.debug("redis: cluster not reachable yet: %s", exc)
        if not listen:
            return
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        # Wait for the first connection (or its failure): subscribers arriving right after
        # startup are then subscribed at once, and the log says where Redis stands.
        self._attempted = anyio.Event()
        self._task_group.start_soon(self._read_forever)
        self._task_group.start_soon(self._refresh_counts)
        self._task_group.start_soon(self._watch_memory)
        if self.linger > 0:
            self._task_group.start_soon(self._sweep)
        with anyio.move_on_after(self.connect_timeout + self.command_timeout):
            await self._attempted.wait()

    async def aclose(self) -> None:
        task_group, self._task_group = self._task_group, None
        self._stopping = True
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        client, self._redis = self._redis, None
        if client is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.connect_timeout):
            # Our subscribers are gone with us: take them out of the shared counts.
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for channel_id in self._shown:
                        pipe.hdel(self._key(channel_id, b":subs"), self.node_id)
                    await pipe.execute()
            except _ERRORS as exc:
                logger.warning("redis: could not remove subscriber counts on close: %s", exc)
        self._local.clear()
        self._shown.clear()
        self._peaks.clear()
        self._lingering.clear()
        self._requested.clear()
        self._listening.clear()
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()
        await client.aclose()

    def status(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "ok": self.connected,
            "address": self.address,
            "node": self.node_id,
            "listening": len(self._listening),
            "lingering": len(self._lingering),
            "reconnects": self.reconnects,
            "error": self.last_error,
            "memory_used": self.memory_used,
            "memory_limit": self.memory_limit,
            "maxmemory_policy": self.memory_policy,
            "refusals": dict(self.refusals),
        }

    # -- commands ---------------------------------------------------------------------------

    async def _run(self, script: str, keys: list[bytes], args: list[Any]) -> Any:
        if self._redis is None:
            raise BackendUnavailable("the redis store is not open")
        try:
            return await self._scripts[script](keys=keys, args=args, client=self._redis)
        except _ERRORS as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: BaseException) -> StoreFull | BackendUnavailable:
        """What a failed command means to the caller: Redis at its maxmemory refuses a
        script before its first write (:class:`StoreFull`, nothing written); anything else
        is the store being unavailable."""
        if isinstance(exc, OutOfMemoryError):
            self.refusals["maxmemory"] += 1
            return StoreFull("maxmemory", f"Redis at {self.address} is at its maxmemory")
        return BackendUnavailable(self._reason(exc))

    def _reason(self, exc: BaseException | str) -> str:
        detail = str(exc).strip() or type(exc).__name__
        return f"redis at {self.address}: {detail}"

    async def create(self, channel_id: str, *, publisher: bool = True) -> bool:
        created = await self._run(
            "create",
            self._keys(channel_id)[:1],
            [f"{time.time():.6f}", int(publisher), *self._expiry],
        )
        return bool(created)

    async def exists(self, channel_id: str) -> bool:
        if self._redis is None:
            raise BackendUnavailable("the redis store is not open")
        try:
            return bool(await self._redis.exists(self._key(channel_id, b":meta")))
        except _ERRORS as exc:
            raise BackendUnavailable(self._reason(exc)) from exc

    async def publish(
        self,
        channel_id: str,
        body: bytes,
        content_type: str,
        *,
        event: str | None = None,
        create: bool = True,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        keys = self._keys(channel_id)
        if idempotency_key is not None and self.idempotency_window > 0:
            # In the channel's slot, so the script may read and write it.
            keys.append(self._key(channel_id, b":idem:" + idempotency_key.encode()))
        args = [
            int(create),
            content_type.encode("latin-1", "replace"),
            0 if event is None else 1,
            b"" if event is None else event.encode("utf-8", "surrogateescape"),
            body,
            *self._limits,
            self._live(channel_id),
            self._publish_command,
            max(1, round(self.idempotency_window * 1000)),
            *self._expiry,
            self.node_id,
            self._local.get(channel_id, 0),
        ]
        if self.wait_replicas > 0:
            result = await self._run_durably("publish", keys, args)
        else:
            result = await self._run("publish", keys, args)
        if not result[0]:
            raise ChannelNotFound(channel_id)
        state, id_time, id_tag, published_at, subscribers, *described = result
        message = Message(
            MessageId(int(id_time), int(id_tag)), body, content_type, event, float(published_at)
        )
        info = self._with_requested(_channel_info(channel_id, *described)) if described else None
        listening = self._listening.get(channel_id)
        if listening is not None and (
            listening.published is None or message.id > listening.published
        ):
            listening.published = message.id
        return PublishResult(message, int(subscribers), replayed=int(state) == 2, info=info)

    async def _run_durably(self, script: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run a writing script and ``WAIT`` for ``wait_replicas`` replicas on the same
        connection (WAIT counts the writes of its own connection): its result once they
        have it, else :class:`BackendUnavailable` (the write stays on the primary, and
        reaches the replicas, and subscribers, later if the primary lives)."""
        if self._redis is None:
            raise BackendUnavailable("the redis store is not open")
        client = self._redis
        try:
            if self.cluster:
                await self._redis.initialize()  # a refresh an earlier error asked for
                cluster = cast("RedisCluster", self._redis)
                # redis-py annotates the key as str; it hashes bytes keys too (keyslot).
                client = self._node_client(cluster.get_node_from_key(keys[0]))  # type: ignore[arg-type]
            async with client.pipeline(transaction=False) as pipe:
                await self._scripts[script](keys=keys, args=args, client=pipe)
                pipe.wait(self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
                result, replicas = await pipe.execute()
        except _ERRORS as exc:
            if self.cluster:
                await self._notice_topology(keys[0])
            raise self._failure(exc) from exc
        if replicas < self.wait_replicas:
            raise BackendUnavailable(
                self._reason(
                    f"stored, but {replicas} of {self.wait_replicas} replica(s) acknowledged "
                    f"it within {self.wait_timeout:g} s"
                )
            )
        return result

    async def _notice_topology(self, key: bytes) -> None:
        """Cluster: after a failure on a node's own client, have the cluster client look at
        the key's node itself: a dead node or a MOVED makes it refresh its slot map."""
        assert self._redis is not None
        with contextlib.suppress(*_ERRORS):
            await self._redis.exists(key)

    async def read_after(self, channel_id: str, after: MessageId) -> ReadResult:
        listening = self._listening.get(channel_id)
        if (
            listening is not None
            and listening.clean is not None
            and after in listening.clean
            and listening.ready.is_set()
        ):
            # A subscriber's open read found nothing after ``after`` while the channel was
            # subscribed, and nothing was delivered since (that empties ``clean``): anything
            # published since comes live, to the subscription now in the hub. No command.
            return ReadResult(None, False)
        result = await self._run(
            "read",
            self._keys(channel_id)[:2],
            [_range_start(after), 1, *self._limits],
        )
        if not result[0]:
            raise ChannelNotFound(channel_id)
        return _read_result(after, *result[1:])

    async def open_channel(
        self, channel_id: str, *, create: bool, after: MessageId | None = None
    ) -> OpenResult:
        """One script: exists, create, touch and the read after ``after``; none at all
        for a subscriber already at the newest message of a channel this process is
        subscribed to and counts subscribers on (a long poll polling again)."""
        read = after is not None
        # Subscribed (and confirmed) before the script runs: what it does not find comes live.
        listening = self._listening.get(channel_id)
        if listening is not None and not (self._pubsub is not None and listening.ready.is_set()):
            listening = None
        if (
            listening is not None
            and after is not None
            and listening.synced
            and (listening.latest is None or after >= listening.latest)
            and (listening.published is None or after >= listening.published)
            # This process's count in Redis keeps the channel from expiring; a deletion
            # would have come on pub/sub (and unsynced it).
            and self._shown.get(channel_id, 0) > 0
            and self.linger > 0  # the sweeper writes "last requested"
        ):
            # Nothing after ``after`` exists but what is still on its way to this process:
            # it reaches the hub live, or (before the subscriber is in it) empties
            # ``clean``, and the read after subscribing asks Redis.
            self._remember_read(listening, after)
            self._requested[channel_id] = time.time()  # told Redis by the sweeper
            return OpenResult(False, ReadResult(None, False))
        epoch = listening.epoch if listening is not None else 0
        result = await self._run(
            "open",
            self._keys(channel_id)[:2],
            [
                int(create),
                f"{time.time():.6f}",
                self._timeout_ms,
                int(read),
                _range_start(after) if after is not None else "",
                *self._limits,
            ],
        )
        if not result[0]:
            raise ChannelNotFound(channel_id)
        created = bool(result[1])
        if after is None:
            return OpenResult(created, None)
        found = _read_result(after, *result[2:5])
        if (
            listening is not None
            # Nothing delivered, no deletion or reconnection meanwhile.
            and listening.epoch == epoch
            and listening is self._listening.get(channel_id)
            and listening.ready.is_set()
        ):
            # Read while subscribed: the channel's newest message then, and anything newer
            # comes on pub/sub (as after the count write, see _write_count).
            listening.synced = True
            listening.latest = _optional_id(*result[5:7])
            if found.message is None and not found.gap:
                self._remember_read(listening, after)
        return OpenResult(created, found)

    @staticmethod
    def _remember_read(listening: _Listening, after: MessageId) -> None:
        clean = listening.clean
        if clean is None:
            clean = listening.clean = set()
        if len(clean) < _MAX_CLEAN:
            clean.add(after)

    async def info(self, channel_id: str) -> ChannelInfo | None:
        result = await self._run(
            "info",
            self._keys(channel_id),
            [*self._limits, self.node_id, self._local.get(channel_id, 0)],
        )
        if not result[0]:
            return None
        return self._with_requested(_channel_info(channel_id, *result[1:]))

    def _with_requested(self, info: ChannelInfo) -> ChannelInfo:
        """``info`` with this process's own latest request, not yet in Redis."""
        at = self._requested.get(info.channel_id)
        if at is None or (info.last_requested is not None and info.last_requested >= at):
            return info
        return dataclasses.replace(info, last_requested=at)

    async def delete(self, channel_id: str) -> bool:
        # Subscribers everywhere (this process too) hear of it on pub/sub.
        deleted = await self._run(
            "delete", self._keys(channel_id), [self._live(channel_id), self._publish_command]
        )
        return bool(deleted)

    async def touch(self, channel_id: str) -> None:
        await self._run(
            "touch", self._keys(channel_id)[:1], [f"{time.time():.6f}", self._timeout_ms]
        )

    # -- live delivery ----------------------------------------------------------------------

    async def listen(self, channel_id: str) -> None:
        listening = self._listening.get(channel_id)
        if listening is None:
            listening = self._listening[channel_id] = _Listening()
            await self._send_subscribe(channel_id, listening)
        else:
            # Back within the linger: the subscription is still there.
            self._lingering.pop(channel_id, None)
        await self._wait_ready(listening)

    async def unlisten(self, channel_id: str) -> None:
        """The last local subscriber left: keep the subscription for ``linger`` seconds
        (a long poll polling again finds it live), then :meth:`_drop` it."""
        if channel_id not in self._listening:
            return
        if self.linger <= 0:
            await self._drop(channel_id)
            return
        self._lingering.pop(channel_id, None)  # its place: by when it started lingering
        self._lingering[channel_id] = time.monotonic()
        while len(self._lingering) > self.max_lingering:
            await self._drop(next(iter(self._lingering)))

    async def _drop(self, channel_id: str) -> None:
        """Unsubscribe a channel nobody here listens to."""
        self._lingering.pop(channel_id, None)
        if self._listening.pop(channel_id, None) is None:
            return
        connection = self._connection_for(self._live(channel_id))
        if connection is not None:
            try:
                await connection.send_command(self._unsubscribe_command, self._live(channel_id))
            except (RedisError, OSError) as exc:
                # The reader reconnects, and then subscribes only what is still listened to.
                logger.debug("redis: UNSUBSCRIBE failed: %s", exc)

    def _connection_for(self, live: bytes) -> Any:
        """The reader's connection that carries ``live`` (None while not connected): the
        one connection, or in a cluster the one to the primary of its slot."""
        if not self.cluster or self._pubsub is None:
            return self._pubsub
        try:
            node = self._redis.get_node_from_key(live)  # type: ignore[union-attr]
        except _ERRORS:
            node = None
        connection = self._pubsub.get(node.name) if node is not None else None
        if connection is None:
            # The slot map changed since the reader connected: it reconnects (and then
            # subscribes this channel too, on its new node).
            self._resync.set()
        return connection

    async def _send_subscribe(self, channel_id: str, listening: _Listening) -> None:
        live = self._live(channel_id)
        connection = self._connection_for(live)
        if connection is None:
            return  # the reader subscribes it on (re)connecting
        self._pending[live] = self._pending.get(live, 0) + 1
        try:
            await connection.send_command(self._subscribe_command, live)
        except (RedisError, OSError) as exc:
            logger.debug("redis: SUBSCRIBE failed: %s", exc)

    async def _wait_ready(self, listening: _Listening) -> None:
        # Without the confirmation a message published between the subscriber's read of
        # the buffer and the SUBSCRIBE taking effect would never reach it. While Redis is
        # unreachable there is nothing to wait for: the subscriber's next read fails.
        if self._pubsub is None or listening.ready.is_set():
            return
        with anyio.move_on_after(self.command_timeout):
            await listening.ready.wait()

    async def subscribers_changed(self, channel_id: str, delta: int) -> None:
        """Count a local subscriber in (``delta`` 1) or out (-1). Redis has this process's
        count raised at once; lowered only once it stayed lower for ``linger`` (by the
        sweeper): subscribers that come back within it (long polls) cost no command."""
        count = self._local[channel_id] = max(0, self._local.get(channel_id, 0) + delta)
        if not count:
            del self._local[channel_id]
        listening = self._listening.get(channel_id)
        if delta > 0 and listening is not None:
            # A second subscriber arriving while the first one's SUBSCRIBE is in flight.
            await self._wait_ready(listening)
        shown = self._shown.get(channel_id, 0)
        if self.linger > 0:
            if count >= shown:
                self._peaks.pop(channel_id, None)
            elif channel_id not in self._peaks:
                # The window starts at the shown count: lowered after one to two lingers.
                self._peaks[channel_id] = shown
            elif count > self._peaks[channel_id]:
                self._peaks[channel_id] = count
            if count <= shown and (
                # A new subscription still learns the channel's last id (where it catches
                # up from after a reconnect) from a write.
                listening is None or listening.known is not None or listening.delivered is not None
            ):
                return
            count = max(count, shown)
        if count:
            self._shown[channel_id] = count
        else:
            self._shown.pop(channel_id, None)
        if channel_id in self._writing:
            # One write per channel at a time, each of the latest count: concurrent writes on
            # pooled connections could land in any order and leave a stale count behind.
            self._writing[channel_id] = True
            if delta > 0:
                # A raised count is in Redis before the subscriber waits (a publish anywhere
                # then counts it): the write in flight writes it next.
                done = self._written.get(channel_id)
                if done is None:
                    done = self._written[channel_id] = anyio.Event()
                with anyio.move_on_after(2 * self.command_timeout):
                    await done.wait()
            return
        self._writing[channel_id] = False
        # Shielded: this writer also carries the counts other subscribers queued behind it
        # (they returned at once). Cancelled midway, because its own client went away, it
        # would drop them and leave a stale count; each command is bounded by command_timeout.
        # (run_shielded: a subscriber's task may be cancelled by asyncio itself, which an
        # anyio shield does not stop.)
        await run_shielded(partial(self._write_count, channel_id))

    async def _write_count(self, channel_id: str) -> None:
        keys = self._keys(channel_id)
        try:
            while True:
                listening = self._listening.get(channel_id)
                live = (
                    listening is not None and self._pubsub is not None and listening.ready.is_set()
                )
                epoch = listening.epoch if listening is not None else 0
                try:
                    last = await self._run(
                        "subscribers",
                        [keys[0], keys[2]],
                        [
                            self.node_id,
                            self._shown.get(channel_id, 0),
                            self.node_ttl,
                            0,
                            self._timeout_ms,
                        ],
                    )
                except (BackendUnavailable, StoreFull) as exc:
                    # Never fails a subscriber: the reader writes every count again on
                    # reconnecting.
                    logger.debug("redis: subscriber count not stored: %s", exc)
                    return
                if last and listening is not None and listening is self._listening.get(channel_id):
                    listening.known = _optional_id(*last)
                    if live and listening.epoch == epoch and listening.ready.is_set():
                        # Read while subscribed, nothing delivered meanwhile: anything newer
                        # comes on pub/sub.
                        listening.synced = True
                        listening.latest = listening.known
                if not self._writing[channel_id]:
                    return
                self._writing[channel_id] = False
        finally:
            del self._writing[channel_id]
            done = self._written.pop(channel_id, None)
            if done is not None:
                done.set()

    # -- the pub/sub reader -----------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = self.reconnect_min
        while not self._stopping:
            assert self._redis is not None
            connections: list[Any] = []
            try:
                if self.cluster:
                    await self._read_shards(connections)
                else:
                    connections.append(self._redis.connection_pool.make_connection())
                    await self._read_connection(connections[0])
            except (*_ERRORS, OSError) as exc:
                reason = self._reason(exc)
            finally:
                was_up, self._pubsub, self.connected = self.connected, None, False
                with anyio.CancelScope(shield=True):
                    for connection in connections:
                        await connection.disconnect(nowait=True)
            if was_up:
                delay = self.reconnect_min
                logger.warning("redis: connection lost (%s); reconnecting", reason)
            elif reason != self.last_error:
                logger.warning("redis: cannot connect (%s); retrying", reason)
            self.last_error = reason
            self._attempted.set()
            # Pooled command connections need nothing: the pool replaces a closed one when
            # handing it out (and disconnecting them here would race with commands using them).
            await anyio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    def _start_subscribing(self) -> None:
        """On a new connection: every listened channel waits for its confirmation, then
        catches up on what was stored while it was not subscribed (see _on_subscribed)."""
        self._pending = {self._live(channel_id): 1 for channel_id in self._listening}
        for listening in self._listening.values():
            listening.ready = anyio.Event()
            listening.catch_up = True
            listening.forget_reads()
            listening.unsync()

    async def _read_connection(self, connection: Any) -> None:
        await connection.connect()
        self._start_subscribing()
        await connection.send_command(
            "SUBSCRIBE", self._control, *(self._live(c) for c in self._listening)
        )
        # From here listen() and unlisten() send on this connection themselves.
        self._pubsub = connection
        await self._pump(connection)

    async def _read_shards(self, connections: list[Any]) -> None:
        """Cluster: one connection per primary, each channel ``SSUBSCRIBE``d on its slot's
        primary; any of them failing, or a slot moving, reconnects them all."""
        cluster = cast("RedisCluster | None", self._redis)
        assert cluster is not None
        # The cluster client notices a dead primary only when a command of its own fails
        # there: ask every primary, so that a failover is seen before reconnecting.
        with contextlib.suppress(*_ERRORS):
            await cluster.execute_command("PING", target_nodes=cluster.PRIMARIES)
        await cluster.initialize()
        shards: dict[str, Any] = {}
        for node in cluster.get_primaries():
            connection = self._node_client(node).connection_pool.make_connection()
            connections.append(connection)
            await connection.connect()
            shards[node.name] = connection
        self._start_subscribing()
        self._resync = anyio.Event()
        by_node: dict[str, list[bytes]] = {}
        for channel_id in self._listening:
            live = self._live(channel_id)
            # redis-py annotates the key as str and the node as optional: it hashes bytes
            # keys too (keyslot), and has no node only for ``replica=True``.
            primary = cluster.get_node_from_key(live)  # type: ignore[arg-type]
            by_node.setdefault(primary.name, []).append(live)  # type: ignore[union-attr]
        for name, lives in by_node.items():
            await shards[name].send_command("SSUBSCRIBE", *lives)
        self._pubsub = shards
        await self._on_connected()
        try:
            async with anyio.create_task_group() as group:
                for connection in shards.values():
                    group.start_soon(self._pump, connection)
                await self._resync.wait()
                raise ConnectionError("a channel's slot moved to another node")
        except ExceptionGroup as errors:
            first: BaseException = errors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    async def _pump(self, connection: Any) -> None:
        """Read one pub/sub connection until it fails, pinging it when it is silent."""
        silent = False
        while True:
            try:
                response = await connection.read_response(timeout=self.heartbeat, push_request=True)
            except MovedError as exc:
                # A SSUBSCRIBE sent to a node that no longer has the slot (a primary that
                # came back as a replica, before the slot map said so): have the cluster
                # client follow the MOVED for that slot, then reconnect to the right node.
                await self._notice_moved(exc.slot_id)
                raise ConnectionError(f"slot moved: {exc}") from exc
            if response is None:
                if silent:
                    raise ConnectionError(f"no reply for {2 * self.heartbeat:g} s")
                silent = True
                await connection.send_command("PING")
                continue
            silent = False
            kind = response[0]
            if kind in (b"message", b"smessage"):
                self._on_live(response[1], response[2])
            elif kind in (b"subscribe", b"ssubscribe"):
                if response[1] == self._control:
                    await self._on_connected()
                else:
                    await self._on_subscribed(connection, response[1])
            elif kind == b"sunsubscribe" and self._lost_slot(response[1]):
                # Redis unsubscribes a shard channel whose slot left the node (failover,
                # resharding): resubscribe everything where it now lives.
                raise ConnectionError("a channel's slot moved to another node")

    async def _notice_moved(self, slot: int) -> None:
        assert self._redis is not None
        cluster = cast("RedisCluster", self._redis)
        for channel_id in list(self._listening):
            live = self._live(channel_id)
            if cluster.keyslot(live) == slot:
                await self._notice_topology(live)
                return

    def _lost_slot(self, live: bytes) -> bool:
        """A SUNSUBSCRIBE we did not ask for: the channel is still listened to (and no
        SSUBSCRIBE of it is on its way, as after a quick unlisten and listen)."""
        return self._channel_of(live) in self._listening and not self._pending.get(live)

    async def _on_connected(self) -> None:
        self.connected = True
        if self.last_error is not None:
            self.reconnects += 1
            logger.warning(
                "redis: reconnected to %s; resubscribed %d channel(s)",
                self.address,
                len(self._listening),
            )
        else:
            logger.info("redis: connected to %s as node %s", self.address, self.node_id)
        self.last_error = None
        self._attempted.set()
        # Counts may have been lost (Redis restarted) or missed (written while it was down).
        await self._write_counts(refresh=False)

    async def _write_counts(self, *, refresh: bool) -> None:
        """Write (or with ``refresh`` only prolong) this node's count on every channel."""
        if not self._shown or self._redis is None:
            return
        script = self._scripts["subscribers"]
        if self.cluster:
            # A cluster pipeline does not load a script a node lacks (as a promoted replica
            # does: the script cache is not replicated); load it on every primary first.
            await self._redis.script_load(_SUBSCRIBERS)
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel_id, count in self._shown.items():
                keys = self._keys(channel_id)
                args = [self.node_id, count, self.node_ttl, int(refresh), self._timeout_ms]
                await script(keys=[keys[0], keys[2]], args=args, client=pipe)
            await pipe.execute()

    async def _sweep(self) -> None:
        """Every ``linger``: unsubscribe the channels that lingered a whole ``linger``, and
        lower each count that stayed below the shown one since the last sweep to the highest
        it reached meanwhile. So both go one to two ``linger`` after the last subscriber."""
        while True:
            await anyio.sleep(self.linger)
            try:
                await self._sweep_once()
            except Exception:  # never takes the store down with it; tried again next time
                logger.exception("redis: sweeping lingering subscriptions and counts failed")

    async def _sweep_once(self) -> None:
        await self._write_requested()
        deadline = time.monotonic() - self.linger
        for channel_id, since in list(self._lingering.items()):
            if since > deadline:
                break  # oldest first: the rest lingered less
            if self._lingering.get(channel_id) == since:
                await self._drop(channel_id)
        for channel_id, peak in list(self._peaks.items()):
            if self._peaks.get(channel_id) != peak:
                continue  # changed while an earlier channel was written
            if peak < self._shown.get(channel_id, 0):
                if peak:
                    self._shown[channel_id] = peak
                else:
                    self._shown.pop(channel_id, None)
                if channel_id in self._writing:
                    self._writing[channel_id] = True
                else:
                    self._writing[channel_id] = False
                    await self._write_count(channel_id)
            local = self._local.get(channel_id, 0)
            if local >= self._shown.get(channel_id, 0):
                self._peaks.pop(channel_id, None)
            else:
                self._peaks[channel_id] = local

    async def _write_requested(self) -> None:
        """Mark requested (and extend, as a request does) the channels subscribers opened
        without a command since the last sweep."""
        requested = self._requested
        if not requested or self._redis is None:
            return
        self._requested = {}
        try:
            if self.cluster:
                await self._redis.script_load(_TOUCH)  # as in _write_counts
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel_id, at in requested.items():
                    await self._scripts["touch"](
                        keys=self._keys(channel_id)[:1],
                        args=[f"{at:.6f}", self._timeout_ms],
                        client=pipe,
                    )
                await pipe.execute()
        except _ERRORS as exc:
            logger.debug("redis: last requested times not written: %s", exc)
            for channel_id, at in requested.items():
                self._requested.setdefault(channel_id, at)

    async def _refresh_counts(self) -> None:
        while True:
            await anyio.sleep(self.node_ttl / 3)
            if self.connected:
                try:
                    await self._write_counts(refresh=True)
                except _ERRORS as exc:
                    logger.debug("redis: subscriber counts not refreshed: %s", exc)

    #: Seconds between reads of Redis's memory figures (status, warnings).
    memory_interval = 5.0

    async def _watch_memory(self) -> None:
        warned: set[str] = set()
        while True:
            if self.connected and self._redis is not None:
                try:
                    if self.cluster:
                        # Each primary answers for itself: status shows their sum.
                        cluster = cast("RedisCluster", self._redis)
                        per_node = await cluster.info("memory", target_nodes=cluster.PRIMARIES)
                        info = _cluster_memory(list(per_node.values()))
                    else:
                        info = await self._redis.info("memory")
                except _ERRORS as exc:
                    logger.debug("redis: memory figures not read: %s", exc)
                else:
                    self._memory_read(info, warned)
            await anyio.sleep(self.memory_interval)

    def _memory_read(self, info: dict[str, Any], warned: set[str]) -> None:
        self.memory_used = int(info.get("used_memory", 0))
        self.memory_limit = int(info.get("maxmemory", 0))
        self.memory_policy = str(info.get("maxmemory_policy", "")) or None
        # Said once per process: a Redis with no budget keeps whatever unbounded retention
        # sends it, and one that evicts drops accepted messages and channels silently.
        unbounded = not self.memory_limit and not (self.max_messages or self.message_timeout)
        evicts = bool(self.memory_limit) and self.memory_policy not in (None, "noeviction")
        if unbounded and "unbounded" not in warned:
            warned.add("unbounded")
            logger.warning(
                "redis: %s has no maxmemory and the store has neither max_messages nor "
                "message_timeout: nothing bounds what it retains",
                self.address,
            )
        if evicts and "evicts" not in warned:
            warned.add("evicts")
            logger.warning(
                "redis: %s evicts keys at its maxmemory (maxmemory-policy %s): accepted "
                "messages and channels may vanish; use noeviction to have publishes refused "
                "(507) instead",
                self.address,
                self.memory_policy,
            )

    async def _on_subscribed(self, connection: Any, live: bytes) -> None:
        # Counted per channel, not per listen: after SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE only
        # the second confirmation means the channel is subscribed.
        pending = self._pending.pop(live, 1) - 1
        if pending > 0:
            self._pending[live] = pending
            return
        listening = self._listening.get(self._channel_of(live))
        if listening is None:
            # Unlistened while this connection was being set up.
            await connection.send_command(self._unsubscribe_command, live)
            return
        if listening.catch_up:
            # Still in the reader: no live message of this channel is handed over before
            # the ones it missed.
            listening.catch_up = False
            await self._catch_up(self._channel_of(live), listening)
        listening.ready.set()

    async def _catch_up(self, channel_id: str, listening: _Listening) -> None:
        after = listening.delivered or listening.known or ORIGIN
        while True:
            result = await self._scripts["read"](
                keys=self._keys(channel_id)[:2],
                args=[_range_start(after), 100, *self._limits],
                client=self._redis,
            )
            if not result[0]:
                if listening.delivered is not None or listening.known is not None:
                    listening.delivered = listening.known = None
                    listening.forget_reads()
                    listening.unsync()
                    self.listener.on_delete(channel_id)
                return
            entries = result[1]
            for entry in entries:
                self._deliver(channel_id, listening, _entry_message(entry))
            if len(entries) < 100:
                return
            after = _stream_id(entries[-1][0])

    def _on_live(self, live: bytes, payload: bytes) -> None:
        channel_id = self._channel_of(live)
        listening = self._listening.get(channel_id)
        if listening is None:
            return  # unlistened while the message was on its way
        if payload == b"d":
            # Ids start again if the channel is created anew.
            listening.delivered = listening.known = None
            listening.forget_reads()
            listening.unsync()
            self.listener.on_delete(channel_id)
            return
        try:
            message = _decode_live(payload)
        except ValueError:
            logger.error("redis: dropped a malformed message on %r", live)
            return
        self._deliver(channel_id, listening, message)

    def _deliver(self, channel_id: str, listening: _Listening, message: Message) -> None:
        if listening.delivered is not None and message.id <= listening.delivered:
            return  # already handed over by the catch-up
        listening.delivered = message.id
        if listening.synced:
            listening.latest = message.id
        listening.forget_reads()
        self.listener.on_message(channel_id, message)


__all__ = ["RedisBackend"]
