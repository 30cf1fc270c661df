"""Per-tenant request rate limiting: GCRA in Redis Lua (atomic across replicas).

The functions read the clock from Redis (``TIME``), so replicas with skewed clocks agree. A tenant
(or an end user of one) with ``limit`` requests per minute may burst ``limit`` requests, then one
every ``60/limit`` s. The edge runs them together with the budget reservation, in one script
(``admission.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The rate limit as Lua functions. ``gcra_peek(key, emission_ms, tolerance_ms, now_ms)``
#: returns ``{allowed, wait_ms, used_ms, new_tat}`` without counting the request;
#: ``gcra_count(key, new_tat, now_ms)`` counts it (once every limit it is under allows it);
#: ``gcra_now()`` is Redis's clock in milliseconds.
GCRA_LUA_FUNCTION = """
local function gcra_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function gcra_peek(key, emission, tolerance, now)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + emission
  local allow_at = new_tat - tolerance
  if allow_at > now then
    return {0, allow_at - now, tat - now, new_tat}
  end
  return {1, 0, new_tat - now, new_tat}
end
local function gcra_count(key, new_tat, now)
  -- PX takes an integer: 60000 / limit has decimals for most limits (e.g. 7 per minute).
  redis.call('SET', key, new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
end
"""

#: A burst of up to a minute's worth of requests.
TOLERANCE_MS = 60_000.0


def emission_ms(per_minute: int) -> float:
    """The time one request uses of the allowance, at ``per_minute`` requests per minute."""
    return 60_000 / per_minute


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    reset_s: int

    @classmethod
    def from_gcra(cls, result: Sequence[Any], *, per_minute: int) -> RateDecision:
        """The decision from what ``gcra`` (the Lua function) returned."""
        allowed, wait_ms, used_ms = result
        emission = emission_ms(per_minute)
        wait = float(wait_ms)
        used = float(used_ms)
        remaining = max(0, math.floor((TOLERANCE_MS - used) / emission)) if allowed else 0
        return cls(
            allowed=bool(int(allowed)),
            limit=per_minute,
            remaining=remaining,
            retry_after_s=max(1, math.ceil(wait / 1000)),
            reset_s=max(0, math.ceil(used / 1000)),
        )

    def headers(self) -> dict[str, str]:
        """IETF ``RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w=60",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers
