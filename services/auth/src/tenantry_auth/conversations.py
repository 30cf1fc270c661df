"""Conversations of ``POST /v1/chat``: the last turns of each, kept in Redis for a while.

A frontend that sends a ``conversation_id`` (a UUID of its choosing) gets the conversation's
earlier turns sent with its next question, as the OpenAI route's ``messages`` would carry them.
A conversation belongs to the tenant and the token's subject that wrote it: its key holds both,
so another tenant, or another client of the same tenant, naming the same id finds nothing.

Each conversation is one Redis list of messages (JSON), trimmed to the last
``conversation_turns`` turns and expiring ``conversation_ttl_s`` after its last turn. Offboarding
a tenant deletes all of its conversations.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from redis.asyncio import Redis
from tenantry_common.events import ChatMessage
from tenantry_common.tenancy import hashed_part, tenant_key

KIND = "conversation"
#: The most history sent with a question, newest turns first: a request must stay far below the
#: broker's record size limit, and the model's window holds much less anyway (inference drops
#: the oldest turns that do not fit).
HISTORY_MAX_CHARS = 100_000


def _key(tenant_id: uuid.UUID, subject: str, conversation_id: uuid.UUID) -> str:
    # The subject is hashed: it is a client id or an external user id, of any length.
    return tenant_key(tenant_id, KIND, hashed_part(subject), str(conversation_id))


def tenant_pattern(tenant_id: uuid.UUID) -> str:
    """A SCAN pattern for every conversation key of a tenant."""
    return tenant_key(tenant_id, KIND, "*")


class ConversationStore:
    """The turns of each (tenant, subject, conversation)."""

    def __init__(self, redis: Redis, *, max_turns: int, ttl_s: int) -> None:
        self.redis = redis
        self.max_turns = max_turns
        self.ttl_s = ttl_s

    async def history(
        self, *, tenant_id: uuid.UUID, subject: str, conversation_id: uuid.UUID
    ) -> list[ChatMessage]:
        """The conversation's kept messages, oldest first (none for an unknown conversation)."""
        raw = await self.redis.lrange(_key(tenant_id, subject, conversation_id), 0, -1)
        messages = [ChatMessage.model_validate_json(item) for item in raw]
        return _newest(messages, HISTORY_MAX_CHARS)

    async def append(
        self,
        *,
        tenant_id: uuid.UUID,
        subject: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
    ) -> None:
        """Add a turn's messages, keep the last turns, and restart the expiry (atomically)."""
        key = _key(tenant_id, subject, conversation_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(m.model_dump_json() for m in messages))
            pipe.ltrim(key, -2 * self.max_turns, -1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def delete(
        self, *, tenant_id: uuid.UUID, subject: str, conversation_id: uuid.UUID
    ) -> bool:
        """Forget one conversation; whether there was one."""
        return bool(await self.redis.unlink(_key(tenant_id, subject, conversation_id)))

    async def delete_tenant(self, tenant_id: uuid.UUID) -> int:
        """Forget every conversation of a tenant (offboarding); how many there were."""
        deleted = 0
        batch: list[str] = []
        async for key in self.redis.scan_iter(match=tenant_pattern(tenant_id), count=1000):
            batch.append(key)
            if len(batch) == 500:
                deleted += await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted


def _newest(messages: list[ChatMessage], max_chars: int) -> list[ChatMessage]:
    """The newest whole turns (a question and its answer) within ``max_chars``."""
    kept = len(messages)
    size = 0
    for start in range(len(messages) - 2, -1, -2):
        size += len(messages[start].content) + len(messages[start + 1].content)
        if size > max_chars:
            break
        kept = start
    return messages[kept:]
