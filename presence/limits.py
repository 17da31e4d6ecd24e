"""Rate limits: a token bucket, and a bounded map of them by key (a client address).

No I/O and no clock of their own: the caller passes the time, so tests drive them with
numbers.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """Allows ``rate`` messages a second on average, in bursts of up to ``burst``.

    Args:
        rate: tokens added per second.
        burst: the bucket's size, and how many it starts with.
        now: the current time in seconds (a monotonic clock).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Takes a token if there is one; False means the sender is over its rate."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def resize(self, rate: float, burst: int) -> None:
        """A new rate and size; a bucket that grows gets the extra tokens at once (a
        newcomer's own burst), one that shrinks keeps no more than it holds now."""
        self._tokens = min(float(burst), self._tokens + max(0, burst - self.burst))
        self.rate = rate
        self.burst = burst

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 when one is)."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class KeyedLimiter:
    """A token bucket per key (``rate`` a second, bursts of ``burst``), for at most
    ``max_keys`` keys at once.

    Memory is bounded whatever the keys: past ``max_keys``, the key seen least recently
    is forgotten, as if its bucket were full again. Forgetting is the generous mistake:
    a client with more addresses than that can reset buckets, never fill memory.

    Args:
        rate: tokens added per second.
        burst: each bucket's size.
        max_keys: keys remembered at most.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, *, max_keys: int = 65_536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> float:
        """Takes a token of ``key``'s bucket; returns 0 when it had one, else the seconds
        until it will (nothing taken)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.allow(now):
            return 0.0
        return bucket.wait(now)
