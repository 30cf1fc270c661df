"""A chat request's rate limits and budget reservation, in one Redis round trip.

One Lua script counts the request against the tenant's rate (``ratelimit.py``) and, when the
tenant limits its end users and the request names one, against that end user's own rate; only
when both allow it is it counted against either, and then it holds the request's worst case of
the tenant's budget (``tenantry_common.budget``) and, when the tenant budgets its end users,
of the end user's daily budget too (if theirs refuses, the tenant's hold is given back).
Atomic across edge replicas like each part alone; a request the budget refuses still counts
against the rates, as when they were calls of their own. An end user over their limit is
refused without using the tenant's rate, so one busy end user cannot use up the rate the
tenant's other users share, nor (with a budget per end user) the tenant's tokens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from redis.asyncio import Redis
from tenantry_common.budget import RESERVE_LUA_FUNCTION, BudgetStore, Reservation
from tenantry_common.tenancy import hashed_part, tenant_key

from tenantry_auth.ratelimit import GCRA_LUA_FUNCTION, TOLERANCE_MS, RateDecision, emission_ms

# KEYS: 1 the tenant's rate, 2 to 4 the budget's tokens, holds and spend; when the request
# names an end user, 5 its rate, 6 and 7 its budget's tokens and holds (one tenant: one cluster
# slot). ARGV: 1 and 2 the tenant's emission and the tolerance, 3 to 7 the reservation's
# arguments, 8 the end user's emission (0: no rate per end user), 9 the end user's daily tokens
# (0: no budget per end user).
# Returns {0, wait, used, 1} when the end user's rate refuses, {0, wait, used, 0} when the
# tenant's does, else {1, wait, used, and a reservation's four}: the tenant's, or the end
# user's when theirs refused it (why 3; the tenant's hold is then given back). A request of 0
# tokens (a search: no model asked) is counted against the rates only, and holds nothing.
_ADMIT = (
    GCRA_LUA_FUNCTION
    + RESERVE_LUA_FUNCTION
    + """
local now = gcra_now()
local tolerance = tonumber(ARGV[2])
local user = nil
if #KEYS == 7 and tonumber(ARGV[8]) > 0 then
  user = gcra_peek(KEYS[5], tonumber(ARGV[8]), tolerance, now)
  if user[1] == 0 then
    return {0, user[2], user[3], 1}
  end
end
local rate = gcra_peek(KEYS[1], tonumber(ARGV[1]), tolerance, now)
if rate[1] == 0 then
  return {0, rate[2], rate[3], 0}
end
gcra_count(KEYS[1], rate[4], now)
if user then
  gcra_count(KEYS[5], user[4], now)
end
local want = tonumber(ARGV[3])
if want == 0 then
  return {rate[1], rate[2], rate[3], 1, 0, 0, 0}
end
local held = reserve(KEYS[2], KEYS[3], KEYS[4], want, tonumber(ARGV[4]), ARGV[5], ARGV[6],
  tonumber(ARGV[7]))
if held[1] == 1 and #KEYS == 7 and tonumber(ARGV[9]) > 0 then
  local mine = reserve(KEYS[6], KEYS[7], KEYS[4], want, tonumber(ARGV[9]), ARGV[5], ARGV[6], -1)
  if mine[1] == 0 then
    local given = tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0')
    redis.call('HDEL', KEYS[3], ARGV[5])
    local reserved = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0') - given
    if reserved < 0 then reserved = 0 end
    redis.call('HSET', KEYS[2], 'reserved', reserved)
    return {rate[1], rate[2], rate[3], 0, mine[2], mine[3], 3}
  end
end
return {rate[1], rate[2], rate[3], held[1], held[2], held[3], held[4]}
"""
)


def end_user_rate_key(tenant_id: uuid.UUID, end_user: str) -> str:
    """The Redis key of one end user's rate (the name hashed: a client's id, of any length)."""
    return tenant_key(tenant_id, "ratelimit", "end_user", hashed_part(end_user))


@dataclass(frozen=True)
class Admitted:
    """The rate decision (the end user's when theirs refused the request, else the tenant's),
    and the reservation when the rates allowed the request."""

    rate: RateDecision
    held: Reservation | None
    end_user_refused: bool = False


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
        end_user: str | None = None,
        end_user_per_minute: int = 0,
        end_user_daily_limit: int = 0,
    ) -> Admitted:
        """Count the request against the rates (the end user's only when ``end_user`` is named
        and ``end_user_per_minute`` set); if allowed, hold ``tokens`` of the budget (none, and
        no budget checked, when ``tokens`` is 0), and of the end user's daily budget as well
        when ``end_user_daily_limit`` is set: both, or neither."""
        keys = [
            tenant_key(tenant_id, "ratelimit", "requests"),
            *BudgetStore.reservation_keys(tenant_id=tenant_id, day=day),
        ]
        args: list[str | int | float] = [
            emission_ms(per_minute),
            TOLERANCE_MS,
            *BudgetStore.reservation_args(
                request_id=request_id,
                tokens=tokens,
                daily_limit=daily_limit,
                monthly_spend_limit_micros=monthly_spend_limit_micros,
            ),
        ]
        if end_user is not None and (end_user_per_minute or end_user_daily_limit):
            keys += [
                end_user_rate_key(tenant_id, end_user),
                *BudgetStore.end_user_keys(tenant_id=tenant_id, end_user=end_user, day=day),
            ]
            args += [
                emission_ms(end_user_per_minute) if end_user_per_minute else 0,
                end_user_daily_limit,
            ]
        result = await self._script(keys=keys, args=args)
        if not int(result[0]):
            by_end_user = bool(int(result[3]))
            limit = end_user_per_minute if by_end_user else per_minute
            return Admitted(RateDecision.from_gcra(result[:3], per_minute=limit), None, by_end_user)
        rate = RateDecision.from_gcra(result[:3], per_minute=per_minute)
        by_end_user = int(result[6]) == 3
        held = BudgetStore.reservation(
            result[3:], daily_limit=end_user_daily_limit if by_end_user else daily_limit
        )
        return Admitted(rate, held)
