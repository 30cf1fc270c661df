"""Per-tenant request rate limiting: GCRA in one Redis Lua script (atomic across replicas).

The script reads the clock from Redis (``TIME``), so replicas with skewed clocks agree. A tenant
with ``limit`` requests per minute may burst ``limit`` requests, then one every ``60/limit`` s.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from tenantry_common.tenancy import tenant_key

_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, tat - now}
end
-- PX takes an integer: 60000 / limit has decimals for most limits (e.g. 7 per minute).
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, 0, new_tat - now}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    reset_s: int

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


class RateLimiter:
    """Requests per minute per tenant."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA)

    async def hit(self, *, tenant_id: uuid.UUID, per_minute: int) -> RateDecision:
        """Count one request against the tenant's rate, unless that would exceed it."""
        emission_ms = 60_000 / per_minute
        tolerance_ms = 60_000.0
        allowed, wait_ms, used_ms = await self._script(
            keys=[tenant_key(tenant_id, "ratelimit", "requests")],
            args=[emission_ms, tolerance_ms],
        )
        wait = float(wait_ms)
        used = float(used_ms)
        remaining = max(0, math.floor((tolerance_ms - used) / emission_ms)) if allowed else 0
        return RateDecision(
            allowed=bool(int(allowed)),
            limit=per_minute,
            remaining=remaining,
            retry_after_s=max(1, math.ceil(wait / 1000)),
            reset_s=max(0, math.ceil(used / 1000)),
        )
