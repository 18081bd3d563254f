"""Which customers may have a frequency-cap counter this ISO week: one bitmap per worker.

A read-only cap check of a customer with no per-customer counter this week needs no read: the
counts are 0. The commit script (api/caps.py) sets the customer's bit in a Redis bitmap of the
week, ``{prefix}:capseen:{bits}:{YYYYWW}``, in the same atomic step that counts the send
(outside the ``{prefix}:cap:`` tracking prefix: setting a bit invalidates nothing). Each worker
holds a copy, kept by the cap-invalidation subscriber (api/cap_tracking.py):

* it GETs the bitmap only *after* its subscription is confirmed, in the subscriber thread, and
  reads the messages queued meanwhile after installing it: a send counted before the GET is in
  the bitmap, one counted after it arrives as a message. No customer with a counter is missed;
* every invalidation naming a per-customer counter of the week sets that customer's bit (sends
  by other workers, operator-written counters, and also expiries and deletions: bits are only
  ever set, so a bit may be set for a customer with no counter, which costs a read, never a
  wrong answer);
* while the subscriber is not connected, or the bitmap of the current week is not loaded yet
  (start, reconnection, the first second of a new week), the summary answers "may have" and
  every check reads, as without it.

The bit of a customer is BLAKE2b (8 bytes, little-endian) of the id's UTF-8 bytes modulo
``2**bits``: stable across processes (Python's ``hash`` is salted per process) and computed here,
then passed to the script as an argument, so Lua needs no hash of its own. With 2**23 bits (1 MB
per worker) and a million customers sent to this week, about 11% of the others read needlessly.
All workers sharing a ``CACHE_PREFIX`` must use the same size (the key names it): a worker
started with another size sees earlier sends of the week only through its own messages.

Our own and not a Bloom filter library: one hash and a bitmap that Redis's SETBIT/GET already
serve (RedisBloom is a module we cannot assume on a managed Redis), and a shared Bloom filter in
Redis would cost the round trip this exists to save.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading

#: BLAKE2b with an 8-byte digest, nothing hashed: each bit continues a copy (building a hash
#: object parses its keyword parameters; a copy does not: callgrind 7.0k -> ~4.5k instructions)
_EMPTY = hashlib.blake2b(digest_size=8)

#: default size of the bitmap, as a power of two (2**23 bits: 1 MB)
SEEN_BITS = 23


def seen_key(prefix: str, bits: int, week: str) -> str:
    """The Redis key of the week's bitmap (named by its size: workers must agree on it)."""
    return f"{prefix}:capseen:{bits}:{week}"


def seen_bit(customer_id: str, bits: int) -> int:
    """The customer's bit in a bitmap of ``2**bits`` bits (the same in every process)."""
    try:
        raw = customer_id.encode()  # the same bytes as below for any id without lone surrogates
    except UnicodeEncodeError:
        raw = customer_id.encode("utf-8", "surrogatepass")
    h = _EMPTY.copy()
    h.update(raw)
    return int.from_bytes(h.digest(), "little") & ((1 << bits) - 1)


def week_days(week: str) -> frozenset[str]:
    """The day labels (YYYYMMDD) of an ISO week label (YYYYWW)."""
    monday = dt.date.fromisocalendar(int(week[:4]), int(week[4:]), 1)
    return frozenset((monday + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(7))


class SeenSummary:
    """A worker's copy of the week's bitmap (see the module doc): False from
    :meth:`may_have` means the customer has no per-customer counter this week."""

    def __init__(self, prefix: str, bits: int = SEEN_BITS) -> None:
        if not 3 <= bits <= 32:
            raise ValueError(f"bits={bits} should be >= 3 and <= 32")
        self.prefix = prefix
        self.bits = bits
        self._counters = f"{prefix}:cap:"
        #: (week label, its day labels, the bitmap) or None: not usable (one attribute, so a
        #: reader never pairs one week's label with another's bits)
        self._state: tuple[str, frozenset[str], bytearray] | None = None
        # setting a bit is a read-modify-write of a byte: two threads must not interleave
        self._lock = threading.Lock()

    @property
    def week(self) -> str | None:
        """The week whose bitmap is loaded (None: none, every customer may have counters)."""
        state = self._state
        return None if state is None else state[0]

    def key(self, week: str) -> str:
        """The Redis key of ``week``'s bitmap."""
        return seen_key(self.prefix, self.bits, week)

    def load(self, week: str, raw: bytes | None) -> None:
        """Install ``week``'s bitmap as read from Redis (None: no send this week yet)."""
        buf = bytearray(1 << (self.bits - 3))
        if raw:
            buf[: len(raw)] = raw[: len(buf)]
        state = (week, week_days(week), buf)
        with self._lock:
            self._state = state

    def clear(self) -> None:
        """Forget the bitmap (the subscriber is lost: changes would go unseen)."""
        with self._lock:
            self._state = None

    def may_have(self, customer_id: str, week: str) -> bool:
        """False only when ``week``'s bitmap is loaded and the customer's bit is clear."""
        return self.has_bit(seen_bit(customer_id, self.bits), week)

    def has_bit(self, bit: int, week: str) -> bool:
        """:meth:`may_have` for a customer's :func:`seen_bit` (computed once by the caller)."""
        state = self._state
        if state is None or state[0] != week:
            return True
        return bool(state[2][bit >> 3] & (0x80 >> (bit & 7)))

    def mark(self, customer_id: str) -> None:
        """Set the customer's bit (this worker is about to count a send to them)."""
        self._set(self._state, customer_id)

    def note(self, keys: list[str]) -> None:
        """Set the bits of the customers whose counters of the loaded week ``keys`` name."""
        state = self._state
        if state is None:
            return
        week, days, _ = state
        counters = self._counters
        for key in keys:
            if not key.startswith(counters):
                continue
            # {campaign}:c:{customer}:d:{YYYYMMDD} or ...:w:{YYYYWW}; both readings are tried
            # (a customer id may end in ":d" or hold ":w:")
            if key[-11:-8] == ":d:" and key[-8:] in days:
                self._customers(state, key[len(counters) : -11])
            if key[-9:-6] == ":w:" and key[-6:] == week:
                self._customers(state, key[len(counters) : -9])

    def _customers(self, state: tuple[str, frozenset[str], bytearray], body: str) -> None:
        # "{campaign}:c:{customer}": a campaign id may itself hold ":c:", so every reading
        # is marked (an extra bit costs a read; a missing one a wrong answer)
        at = body.find(":c:")
        while at >= 0:
            self._set(state, body[at + 3 :])
            at = body.find(":c:", at + 1)

    def _set(self, state: tuple[str, frozenset[str], bytearray] | None, customer_id: str) -> None:
        if state is None:
            return
        bit = seen_bit(customer_id, self.bits)
        with self._lock:
            state[2][bit >> 3] |= 0x80 >> (bit & 7)
