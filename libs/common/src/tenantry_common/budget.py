"""Token budgets in Redis, shared by the edge (reserve) and metering (settle, reconcile).

Per tenant and UTC period, keys are by period (never reset by a cron):

* ``budget:tokens:<YYYY-MM-DD>`` — hash ``used`` (settled real tokens) and ``reserved``
  (worst cases of requests still in flight);
* ``budget:holds:<YYYY-MM-DD>`` — hash request id → tokens reserved for it;
* ``budget:spend:<YYYY-MM>`` — hash ``used`` (settled micro-dollars);
* ``budget:settled:<YYYY-MM-DD>`` — hash of the ids (16 raw bytes) of the usage events of
  that UTC usage day already settled: what makes a settlement happen once. One hash per
  tenant and day rather than one key per event: 82 instead of 197 bytes per event
  (``bench/metering/marker_memory.py``), and a batch names one key.

Per end user of a tenant (the ``user`` a request names; its id hashed into the key) and UTC
day, the same pair as the tenant's, for the tenant's per-end-user daily budget:
``budget:end-user-tokens:<hash>:<YYYY-MM-DD>`` (``used``, ``reserved``) and
``budget:end-user-holds:<hash>:<YYYY-MM-DD>``. The edge holds a request's worst case there too
when the tenant sets such a budget; metering settles every usage event that names an end user
into them (so the counts are right from the moment a tenant turns the budget on).

Every change is one Lua script, so two edge replicas and metering can act at once.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from redis.asyncio import Redis

from tenantry_common.tenancy import hashed_part, tenant_key

#: Keys outlive their period long enough for late settlements and reconciliation.
TOKEN_KEY_TTL_S = 3 * 24 * 3600
SPEND_KEY_TTL_S = 40 * 24 * 3600
SETTLED_MARKER_TTL_S = 3 * 24 * 3600

#: The reservation as a Lua function, so that another script can run it after checks of its own
#: (the edge's admission runs the rate limit first, in the same round trip). Returns
#: ``{granted, used, reserved, why}``; ``why`` 1 is the daily tokens, 2 the monthly spend (3,
#: an end user's daily tokens, is the admission script's).
RESERVE_LUA_FUNCTION = """
local function reserve(tokens_key, holds_key, spend_key, want, limit, request_id, ttl, spend_limit)
  local used = tonumber(redis.call('HGET', tokens_key, 'used') or '0')
  local reserved = tonumber(redis.call('HGET', tokens_key, 'reserved') or '0')
  local spend_used = tonumber(redis.call('HGET', spend_key, 'used') or '0')
  if spend_limit >= 0 and spend_used >= spend_limit then
    return {0, used, reserved, 2}
  end
  if redis.call('HEXISTS', holds_key, request_id) == 1 then
    return {1, used, reserved, 0}
  end
  if used + reserved + want > limit then
    return {0, used, reserved, 1}
  end
  redis.call('HINCRBY', tokens_key, 'reserved', want)
  redis.call('HSET', holds_key, request_id, want)
  redis.call('EXPIRE', tokens_key, ttl)
  redis.call('EXPIRE', holds_key, ttl)
  return {1, used, reserved + want, 0}
end
"""

_RESERVE = (
    RESERVE_LUA_FUNCTION
    + "return reserve(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3],"
    " ARGV[4], tonumber(ARGV[5]))"
)

_RELEASE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0') - tonumber(held)
if reserved < 0 then reserved = 0 end
redis.call('HSET', KEYS[1], 'reserved', reserved)
return tonumber(held)
"""

_SETTLE = """
-- KEYS: 1 reserved-day tokens, 2 reserved-day holds, 3 usage-day tokens, 4 month spend,
-- 5 usage-day settled ids; for an event naming an end user, 6 and 7 the end user's
-- reserved-day tokens and holds, 8 its usage-day tokens. ARGV[7]: the event id (16 raw bytes).
if redis.call('HSETNX', KEYS[5], ARGV[7], '1') == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[5], ARGV[5])
-- Release the request's hold in KEYS[holds] from the reserved count of KEYS[tokens].
local function release(holds, tokens)
  local held = redis.call('HGET', KEYS[holds], ARGV[1])
  if held then
    redis.call('HDEL', KEYS[holds], ARGV[1])
    local reserved = tonumber(redis.call('HGET', KEYS[tokens], 'reserved') or '0') - tonumber(held)
    if reserved < 0 then reserved = 0 end
    redis.call('HSET', KEYS[tokens], 'reserved', reserved)
  end
end
release(2, 1)
redis.call('HINCRBY', KEYS[3], 'used', ARGV[2])
redis.call('HINCRBY', KEYS[4], 'used', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[6])
if #KEYS == 8 then
  release(7, 6)
  redis.call('HINCRBY', KEYS[8], 'used', ARGV[2])
  redis.call('EXPIRE', KEYS[8], ARGV[4])
end
return 1
"""

_SETTLE_BATCH = """
-- Many settlements of ONE tenant, in order, with exactly the effects of _SETTLE run once per
-- event. KEYS: the tenant's distinct token/hold/spend/settled keys. ARGV: 1 number of events,
-- 2 token-key TTL, 3 settled-ids TTL, 4 spend-key TTL, 5 the events as one string of fixed
-- records (see _RECORD in Python): event id and request id (16 raw bytes each), tokens, cost
-- (8-byte signed big-endian), then the KEYS indexes (2 bytes each) of its reserved-day
-- tokens, reserved-day holds, usage-day tokens, month spend and usage-day settled ids, and of
-- its end user's reserved-day tokens, reserved-day holds and usage-day tokens (0: it names
-- no end user).
-- One string rather than several arguments per event: the client packs each argument in
-- Python, which cost more than the rest of the settlement. Counters are summed here and
-- written once per key. Returns one string of n digits: "1" applied now, "0" settled before.
local n = tonumber(ARGV[1])
local blob = ARGV[5]
local reserved = {}
local used = {}
local ttl = {}
local applied = {}
local pos = 1
-- Release a request's hold in KEYS[holds] from the reserved count of KEYS[tokens].
local function release(holds, tokens, request_id)
  local held = redis.call('HGET', KEYS[holds], request_id)
  if held then
    redis.call('HDEL', KEYS[holds], request_id)
    local r = reserved[tokens]
    if r == nil then
      r = tonumber(redis.call('HGET', KEYS[tokens], 'reserved') or '0')
    end
    r = r - tonumber(held)
    if r < 0 then r = 0 end
    reserved[tokens] = r
  end
end
for i = 1, n do
  local event_id, request, tokens, cost, tk, hk, uk, sk, mk, et, eh, eu
  event_id, request, tokens, cost, tk, hk, uk, sk, mk, et, eh, eu, pos =
    struct.unpack('>c16c16i8i8HHHHHHHH', blob, pos)
  if redis.call('HSETNX', KEYS[mk], event_id, '1') == 0 then
    applied[i] = '0'
  else
    ttl[mk] = ARGV[3]
    local request_id = string.format(
      '%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x',
      string.byte(request, 1, 16))
    release(hk, tk, request_id)
    used[uk] = (used[uk] or 0) + tokens
    used[sk] = (used[sk] or 0) + cost
    ttl[uk] = ARGV[2]
    ttl[sk] = ARGV[4]
    if eh ~= 0 then
      release(eh, et, request_id)
      used[eu] = (used[eu] or 0) + tokens
      ttl[eu] = ARGV[2]
    end
    applied[i] = '1'
  end
end
for k, r in pairs(reserved) do
  redis.call('HSET', KEYS[k], 'reserved', string.format('%d', r))
end
for k, u in pairs(used) do
  redis.call('HINCRBY', KEYS[k], 'used', string.format('%d', u))
end
for k, t in pairs(ttl) do
  redis.call('EXPIRE', KEYS[k], t)
end
return table.concat(applied)
"""

#: One event of _SETTLE_BATCH's ARGV[5]: event id, request id, tokens, cost, eight KEYS indexes.
_RECORD = struct.Struct(">16s16sqqHHHHHHHH")
#: The end-user key indexes of a record that names no end user.
_NO_END_USER = (0, 0, 0)
#: Lua numbers are doubles: larger integers would lose their last digits.
_MAX_LUA_INTEGER = 2**53

_APPLIED = ord("1")  # a byte of _SETTLE_BATCH's reply (redis-py returns bytes unless decoding)

_RECONCILE = """
-- Set settled totals to the ledger's; drop holds older than the cut-off (never settled).
redis.call('HSET', KEYS[1], 'used', ARGV[1])
redis.call('HSET', KEYS[3], 'used', ARGV[2])
local holds = redis.call('HGETALL', KEYS[2])
local reserved = 0
for i = 1, #holds, 2 do reserved = reserved + tonumber(holds[i + 1]) end
redis.call('HSET', KEYS[1], 'reserved', reserved)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return reserved
"""

_RECONCILE_TOKENS = """
-- One end user's day: settled tokens to the ledger's; reserved recounted from its holds.
redis.call('HSET', KEYS[1], 'used', ARGV[1])
local holds = redis.call('HGETALL', KEYS[2])
local reserved = 0
for i = 1, #holds, 2 do reserved = reserved + tonumber(holds[i + 1]) end
redis.call('HSET', KEYS[1], 'reserved', reserved)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return reserved
"""


class RefusalReason:
    DAILY_TOKENS = "daily_tokens"
    MONTHLY_SPEND = "monthly_spend"
    END_USER_DAILY_TOKENS = "end_user_daily_tokens"


@dataclass(frozen=True)
class Reservation:
    granted: bool
    used: int
    reserved: int
    limit: int
    refusal: str | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True)
class BudgetSnapshot:
    day: date
    tokens_used: int
    tokens_reserved: int
    month: str
    spend_used_micros: int


class Settlement(NamedTuple):
    """One usage event's settlement (the arguments of ``BudgetStore.settle``).

    A named tuple: metering builds one per usage event, and a frozen dataclass's ``__init__``
    costs several times a tuple's.
    """

    tenant_id: uuid.UUID
    event_id: uuid.UUID
    request_id: uuid.UUID
    reserved_day: date
    usage_day: date
    tokens: int
    cost_micros: int
    end_user: str | None = None


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def seconds_until_next_day(now: datetime) -> int:
    """Seconds until the next UTC midnight (for ``Retry-After`` on an exhausted daily budget)."""
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


class _TenantKeys:
    """One tenant's distinct counter keys for a batched script, by their 1-based KEYS index
    (the same keys as ``BudgetStore._tokens``, ``_holds`` and ``_spend``)."""

    def __init__(self, tenant_id: uuid.UUID) -> None:
        self.tenant_id = tenant_id
        self.keys: list[str] = []
        self._index: dict[tuple[str, date | str], int] = {}

    def _slot(self, kind: str, period: date | str) -> int:
        index = self._index.get((kind, period))
        if index is None:
            label = period if isinstance(period, str) else period.isoformat()
            self.keys.append(tenant_key(self.tenant_id, "budget", kind, label))
            index = self._index[(kind, period)] = len(self.keys)
        return index

    def tokens(self, day: date) -> int:
        return self._slot("tokens", day)

    def holds(self, day: date) -> int:
        return self._slot("holds", day)

    def settled(self, day: date) -> int:
        return self._slot("settled", day)

    def end_user_tokens(self, hashed_end_user: str, day: date) -> int:
        """``hashed_end_user``: ``hashed_part`` of the name, hashed once by the caller."""
        return self._slot(f"end-user-tokens:{hashed_end_user}", day)

    def end_user_holds(self, hashed_end_user: str, day: date) -> int:
        return self._slot(f"end-user-holds:{hashed_end_user}", day)

    def spend(self, day: date) -> int:
        """The spend key of the day's month."""
        index = self._index.get(("spend-of-day", day))
        if index is None:
            index = self._index[("spend-of-day", day)] = self._slot("spend", month_of(day))
        return index


class BudgetStore:
    """Reservation, settlement and reconciliation of a tenant's token and spend budgets."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._settle = redis.register_script(_SETTLE)
        self._reconcile = redis.register_script(_RECONCILE)
        self._settle_batch = redis.register_script(_SETTLE_BATCH)
        self._reconcile_tokens = redis.register_script(_RECONCILE_TOKENS)

    @staticmethod
    def _tokens(tenant_id: uuid.UUID, day: date) -> str:
        return tenant_key(tenant_id, "budget", "tokens", day.isoformat())

    @staticmethod
    def _holds(tenant_id: uuid.UUID, day: date) -> str:
        return tenant_key(tenant_id, "budget", "holds", day.isoformat())

    @staticmethod
    def _spend(tenant_id: uuid.UUID, month: str) -> str:
        return tenant_key(tenant_id, "budget", "spend", month)

    @staticmethod
    def _end_user_tokens(tenant_id: uuid.UUID, end_user: str, day: date) -> str:
        return tenant_key(
            tenant_id, "budget", f"end-user-tokens:{hashed_part(end_user)}", day.isoformat()
        )

    @staticmethod
    def _end_user_holds(tenant_id: uuid.UUID, end_user: str, day: date) -> str:
        return tenant_key(
            tenant_id, "budget", f"end-user-holds:{hashed_part(end_user)}", day.isoformat()
        )

    @classmethod
    def end_user_keys(cls, *, tenant_id: uuid.UUID, end_user: str, day: date) -> list[str]:
        """An end user's tokens and holds keys of ``day`` (what the edge reserves in)."""
        return [
            cls._end_user_tokens(tenant_id, end_user, day),
            cls._end_user_holds(tenant_id, end_user, day),
        ]

    @classmethod
    def _settle_keys(cls, s: Settlement) -> list[str]:
        """``_SETTLE``'s keys for one settlement."""
        keys = [
            cls._tokens(s.tenant_id, s.reserved_day),
            cls._holds(s.tenant_id, s.reserved_day),
            cls._tokens(s.tenant_id, s.usage_day),
            cls._spend(s.tenant_id, month_of(s.usage_day)),
            cls._settled(s.tenant_id, s.usage_day),
        ]
        if s.end_user is not None:
            keys += [
                *cls.end_user_keys(tenant_id=s.tenant_id, end_user=s.end_user, day=s.reserved_day),
                cls._end_user_tokens(s.tenant_id, s.end_user, s.usage_day),
            ]
        return keys

    @staticmethod
    def _settled(tenant_id: uuid.UUID, day: date) -> str:
        """The ids of the tenant's usage events of ``day`` already settled (a hash)."""
        return tenant_key(tenant_id, "budget", "settled", day.isoformat())

    @classmethod
    def reservation_keys(cls, *, tenant_id: uuid.UUID, day: date) -> list[str]:
        """The keys ``reserve`` (the Lua function) takes, in its order."""
        return [
            cls._tokens(tenant_id, day),
            cls._holds(tenant_id, day),
            cls._spend(tenant_id, month_of(day)),
        ]

    @staticmethod
    def reservation_args(
        *,
        request_id: uuid.UUID,
        tokens: int,
        daily_limit: int,
        monthly_spend_limit_micros: int | None,
    ) -> list[int | str]:
        """The other arguments ``reserve`` (the Lua function) takes, in its order."""
        return [
            tokens,
            daily_limit,
            str(request_id),
            TOKEN_KEY_TTL_S,
            -1 if monthly_spend_limit_micros is None else monthly_spend_limit_micros,
        ]

    @staticmethod
    def reservation(result: Sequence[Any], *, daily_limit: int) -> Reservation:
        """A ``Reservation`` from what ``reserve`` (the Lua function) returned."""
        granted, used, reserved, why = (int(x) for x in result)
        refusal = {
            0: None,
            1: RefusalReason.DAILY_TOKENS,
            2: RefusalReason.MONTHLY_SPEND,
            3: RefusalReason.END_USER_DAILY_TOKENS,
        }[why]
        return Reservation(bool(granted), used, reserved, daily_limit, refusal)

    async def reserve(
        self,
        *,
        tenant_id: uuid.UUID,
        request_id: uuid.UUID,
        tokens: int,
        day: date,
        daily_limit: int,
        monthly_spend_limit_micros: int | None = None,
    ) -> Reservation:
        """Hold ``tokens`` of today's budget for a request, unless it would overshoot."""
        result = await self._reserve(
            keys=self.reservation_keys(tenant_id=tenant_id, day=day),
            args=self.reservation_args(
                request_id=request_id,
                tokens=tokens,
                daily_limit=daily_limit,
                monthly_spend_limit_micros=monthly_spend_limit_micros,
            ),
        )
        return self.reservation(result, daily_limit=daily_limit)

    async def release(
        self,
        *,
        tenant_id: uuid.UUID,
        request_id: uuid.UUID,
        day: date,
        end_user: str | None = None,
    ) -> int:
        """Give back a reservation that will never be settled (e.g. the request was not sent):
        the tenant's, and the end user's when the request named one. The tenant's tokens."""
        released = int(
            await self._release(
                keys=[self._tokens(tenant_id, day), self._holds(tenant_id, day)],
                args=[str(request_id)],
            )
        )
        if end_user is not None:
            await self._release(
                keys=self.end_user_keys(tenant_id=tenant_id, end_user=end_user, day=day),
                args=[str(request_id)],
            )
        return released

    async def settle(
        self,
        *,
        tenant_id: uuid.UUID,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        reserved_day: date,
        usage_day: date,
        tokens: int,
        cost_micros: int,
        end_user: str | None = None,
    ) -> bool:
        """Release a request's hold and add its real usage, once per ``event_id`` (the end
        user's too, when it names one)."""
        return (
            await self.settle_many(
                [
                    Settlement(
                        tenant_id,
                        event_id,
                        request_id,
                        reserved_day,
                        usage_day,
                        tokens,
                        cost_micros,
                        end_user,
                    )
                ]
            )
        )[0]

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """``settle`` for many events in one round trip (a pipeline; each script stays atomic)."""
        if not settlements:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for s in settlements:
            await self._settle(
                keys=self._settle_keys(s),
                args=[
                    str(s.request_id),
                    s.tokens,
                    s.cost_micros,
                    TOKEN_KEY_TTL_S,
                    SETTLED_MARKER_TTL_S,
                    SPEND_KEY_TTL_S,
                    s.event_id.bytes,
                ],
                client=pipe,
            )
        return [bool(x) for x in await pipe.execute()]

    async def settle_batch(self, settlements: Sequence[Settlement]) -> list[bool]:
        """``settle`` for many events: one script call per tenant, all in one round trip.

        Same Redis state and results as ``settle_many`` (each event once, holds released in
        order), but a tenant's counters are summed in the script and written once, so a batch
        costs one script per tenant instead of one per event. Each tenant's script is atomic
        and touches only that tenant's keys (one cluster slot).
        """
        if not settlements:
            return []
        by_tenant: dict[uuid.UUID, list[int]] = {}
        for i, s in enumerate(settlements):
            by_tenant.setdefault(s.tenant_id, []).append(i)
        pipe = self.redis.pipeline(transaction=False)
        pack = _RECORD.pack
        for tenant_id, indexes in by_tenant.items():
            keys = _TenantKeys(tenant_id)
            # The five key indexes of a (reserved day, usage day) pair, found once.
            slots: dict[tuple[date, date], tuple[int, int, int, int, int]] = {}
            records = []
            for i in indexes:
                s = settlements[i]
                if not (0 <= s.tokens < _MAX_LUA_INTEGER and 0 <= s.cost_micros < _MAX_LUA_INTEGER):
                    raise ValueError("a settlement's tokens and cost must be in [0, 2**53)")
                days = (s.reserved_day, s.usage_day)
                slot = slots.get(days)
                if slot is None:
                    slot = slots[days] = (
                        keys.tokens(s.reserved_day),
                        keys.holds(s.reserved_day),
                        keys.tokens(s.usage_day),
                        keys.spend(s.usage_day),
                        keys.settled(s.usage_day),
                    )
                mine = _NO_END_USER
                if s.end_user is not None:
                    who = hashed_part(s.end_user)  # once per event: a SHA-256 of the name
                    mine = (
                        keys.end_user_tokens(who, s.reserved_day),
                        keys.end_user_holds(who, s.reserved_day),
                        keys.end_user_tokens(who, s.usage_day),
                    )
                records.append(
                    pack(
                        s.event_id.bytes, s.request_id.bytes, s.tokens, s.cost_micros, *slot, *mine
                    )
                )
            args: list[int | bytes] = [
                len(indexes),
                TOKEN_KEY_TTL_S,
                SETTLED_MARKER_TTL_S,
                SPEND_KEY_TTL_S,
                b"".join(records),
            ]
            await self._settle_batch(keys=keys.keys, args=args, client=pipe)
        applied = [False] * len(settlements)
        for indexes, reply in zip(by_tenant.values(), await pipe.execute(), strict=True):
            digits = reply.encode() if isinstance(reply, str) else reply  # a decoding client
            for i, digit in zip(indexes, digits, strict=True):
                applied[i] = digit == _APPLIED
        return applied

    async def reconcile(
        self,
        *,
        tenant_id: uuid.UUID,
        day: date,
        ledger_tokens: int,
        ledger_spend_micros: int,
    ) -> None:
        """Make Redis's settled totals equal the ledger's (the source of truth)."""
        await self._reconcile(
            keys=[
                self._tokens(tenant_id, day),
                self._holds(tenant_id, day),
                self._spend(tenant_id, month_of(day)),
            ],
            args=[ledger_tokens, ledger_spend_micros, TOKEN_KEY_TTL_S, SPEND_KEY_TTL_S],
        )

    async def reconcile_end_user(
        self, *, tenant_id: uuid.UUID, end_user: str, day: date, ledger_tokens: int
    ) -> None:
        """Make an end user's settled tokens of ``day`` equal the ledger's."""
        await self._reconcile_tokens(
            keys=self.end_user_keys(tenant_id=tenant_id, end_user=end_user, day=day),
            args=[ledger_tokens, TOKEN_KEY_TTL_S],
        )

    async def end_user_snapshot(
        self, *, tenant_id: uuid.UUID, end_user: str, day: date
    ) -> tuple[int, int]:
        """An end user's settled and reserved tokens of ``day``."""
        used, reserved = await self.redis.hmget(
            self._end_user_tokens(tenant_id, end_user, day), ["used", "reserved"]
        )
        return int(used or 0), int(reserved or 0)

    async def snapshot(self, *, tenant_id: uuid.UUID, day: date) -> BudgetSnapshot:
        """Current counters for a tenant's day and month."""
        month = month_of(day)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self._tokens(tenant_id, day), ["used", "reserved"])
        pipe.hget(self._spend(tenant_id, month), "used")
        (used, reserved), spend = await pipe.execute()
        return BudgetSnapshot(day, int(used or 0), int(reserved or 0), month, int(spend or 0))
