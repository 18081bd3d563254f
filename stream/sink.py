"""Where the stream job writes: customer records, segment changes, dead letters, counters (Redis).

Delivery is at-least-once with idempotent effects. After a crash the job restarts from its last
checkpoint and replays the events that followed it, so a customer's update can be written twice
(or an older one again after a newer one). Every record write therefore carries the customer's
sequence number (events folded so far, ``@seq``), and one Lua script applies it atomically only
when it is newer than the stored one; the segment-change event and the counters are written by
the same script, in the same step. A replayed update is a no-op, so the stored features, the
change stream and the counters end exactly as if every event had been processed once.

Keys (``prefix`` is the service's ``CACHE_PREFIX``):

* ``{prefix}:features:{schema_id}:{customer}``: the record (:mod:`scoring.online`), plus ``@seq``;
* ``{prefix}:stream:segment-changes``: a Redis Stream, one entry per change of a customer's
  segment (``customer_id``, ``from`` (empty for a first assignment), ``to``, ``to_name``,
  ``model_version``, ``event_time``), capped near :data:`STREAM_MAXLEN` entries;
* ``{prefix}:stream:dead-letters``: a Redis Stream of refused events (``reason``, ``error``,
  ``event`` (the line, cut at 2,000 characters)); a replay can repeat one (at-least-once);
* ``{prefix}:stream:counters``: a hash of running totals (``updates``, ``segment_changes``,
  ``dead_letters``, ``dead_letters:<reason>``) that the service's ``/metrics`` exposes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from scoring.online import SEGMENT_ID, changes_key, counters_key, dead_letters_key

SEQ = "@seq"
STREAM_MAXLEN = 100_000
MAX_DEAD_LETTER_CHARS = 2000

#: KEYS: record, changes stream, counters. ARGV: seq, segment id, maxlen, n field pairs,
#: fields..., then the change entry's field pairs.
_UPDATE = """
local current = tonumber(redis.call('HGET', KEYS[1], '@seq') or '-1')
local seq = tonumber(ARGV[1])
if current >= seq then return 0 end
local previous = redis.call('HGET', KEYS[1], '@segment_id')
local n = tonumber(ARGV[4])
local fields = {}
for i = 5, 4 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[3], 'updates', 1)
if previous ~= ARGV[2] then
  local entry = {}
  for i = 5 + 2 * n, #ARGV do entry[#entry + 1] = ARGV[i] end
  entry[#entry + 1] = 'from'
  entry[#entry + 1] = previous or ''
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
  redis.call('HINCRBY', KEYS[3], 'segment_changes', 1)
  return 2
end
return 1
"""


class RedisSink:
    """The job's writes to Redis (one per task; the client is made in the task, not at import)."""

    NOT_NEWER, WRITTEN, CHANGED = 0, 1, 2

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._update = client.register_script(_UPDATE)
        self._keys = (changes_key(prefix), counters_key(prefix))

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisSink:
        """A sink on a new client (generous timeouts: the job waits for Redis, never skips it)."""
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10), prefix)

    def write(
        self,
        key: str,
        seq: int,
        fields: Mapping[str, str],
        change: Mapping[str, str],
    ) -> int:
        """Apply one customer update if ``seq`` is newer than the stored one.

        ``fields`` must hold ``@segment_id``; ``change`` is the segment-change entry written when
        the stored segment differs. Returns NOT_NEWER, WRITTEN or CHANGED.
        """
        flat: list[str] = []
        for name, value in fields.items():
            flat += (name, value)
        flat += (SEQ, str(seq))
        entry: list[str] = []
        for name, value in change.items():
            entry += (name, value)
        return int(
            self._update(
                keys=[key, *self._keys],
                args=[seq, fields[SEGMENT_ID], STREAM_MAXLEN, len(flat) // 2, *flat, *entry],
            )
        )

    def dead_letter(self, reason: str, error: str, line: str | bytes) -> None:
        """Record a refused event with its reason, and count it."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            dead_letters_key(self.prefix),
            {"reason": reason, "error": error[:500], "event": text[:MAX_DEAD_LETTER_CHARS]},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        pipe.hincrby(counters_key(self.prefix), "dead_letters", 1)
        pipe.hincrby(counters_key(self.prefix), f"dead_letters:{reason}", 1)
        pipe.execute()

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()
