"""A chat request's rate limit and budget reservation, in one Redis round trip.

One Lua script counts the request against the tenant's rate (``ratelimit.py``) and, only when
the rate allows it, holds the request's worst case of the tenant's budget
(``tenantry_common.budget``). Atomic across edge replicas like each part alone; a request the
budget refuses still counts against the rate, as when they were two calls.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from redis.asyncio import Redis
from tenantry_common.budget import RESERVE_LUA_FUNCTION, BudgetStore, Reservation
from tenantry_common.tenancy import tenant_key

from tenantry_auth.ratelimit import GCRA_LUA_FUNCTION, TOLERANCE_MS, RateDecision, emission_ms

# KEYS: 1 the rate, 2 to 4 the budget's tokens, holds and spend (one tenant: one cluster slot).
# ARGV: 1 and 2 the rate's emission and tolerance, 3 to 7 the reservation's arguments.
_ADMIT = (
    GCRA_LUA_FUNCTION
    + RESERVE_LUA_FUNCTION
    + """
local rate = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if rate[1] == 0 then
  return rate
end
local held = reserve(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5],
  ARGV[6], tonumber(ARGV[7]))
return {rate[1], rate[2], rate[3], held[1], held[2], held[3], held[4]}
"""
)


@dataclass(frozen=True)
class Admitted:
    """The rate decision, and the reservation when the rate allowed the request."""

    rate: RateDecision
    held: Reservation | None


class Admission:
    """Rate limit, then budget reservation, for one chat request."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_ADMIT)

    async def admit(
        self,
        *,
        tenant_id: uuid.UUID,
        per_minute: int,
        request_id: uuid.UUID,
        tokens: int,
        day: date,
        daily_limit: int,
        monthly_spend_limit_micros: int | None,
    ) -> Admitted:
        """Count the request against the rate; if allowed, hold ``tokens`` of the budget."""
        result = await self._script(
            keys=[
                tenant_key(tenant_id, "ratelimit", "requests"),
                *BudgetStore.reservation_keys(tenant_id=tenant_id, day=day),
            ],
            args=[
                emission_ms(per_minute),
                TOLERANCE_MS,
                *BudgetStore.reservation_args(
                    request_id=request_id,
                    tokens=tokens,
                    daily_limit=daily_limit,
                    monthly_spend_limit_micros=monthly_spend_limit_micros,
                ),
            ],
        )
        rate = RateDecision.from_gcra(result[:3], per_minute=per_minute)
        if not rate.allowed:
            return Admitted(rate, None)
        return Admitted(rate, BudgetStore.reservation(result[3:], daily_limit=daily_limit))
