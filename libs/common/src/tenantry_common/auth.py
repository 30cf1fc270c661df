"""Verifying bearer tokens: the edge's own (Ed25519) and, by settings, an external issuer's.

Rules that hold for every token: the algorithm is one of a pinned list (never ``none``, never an
HMAC that a public key could be abused as); the key is chosen by the token's ``kid`` among keys
of the issuer *as configured here* (a token can never name a URL to fetch keys from); ``exp``,
``iat``, ``iss``, ``aud``, ``sub``, ``tenant_id`` and ``role`` are required.

A frontend sends the same token with every request until it expires, so a verified token is
remembered (exactly that string, a bounded LRU): asked again, the verifier checks only that it
has not expired and that its issuer still publishes the same public key under its ``kid`` (a
retired or replaced key ends it at once). Whether the tenant and client may still act is not
part of a token's verification: services check that per request (the edge's access guard).
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import jwt
from fastapi import HTTPException, Request, status
from jwt import PyJWK, PyJWKSet
from pydantic import BaseModel, ConfigDict, Field

#: Asymmetric algorithms only: HS* would let a published public key act as a shared secret.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "tenant_id", "role")

EDGE_ISSUER = "tenantry-edge"
API_AUDIENCE = "tenantry-api"


class Role(enum.StrEnum):
    MEMBER = "member"
    ADMIN = "admin"
    OPERATOR = "operator"


class Principal(BaseModel):
    """Who is calling, as a verified token says."""

    model_config = ConfigDict(frozen=True)

    tenant_id: uuid.UUID
    subject: str
    role: Role
    issuer: str
    client_id: str | None = None
    token_id: str | None = None
    issued_at: datetime
    expires_at: datetime
    raw_token: str = Field(repr=False, exclude=True)

    def can_admin(self, tenant_id: uuid.UUID) -> bool:
        """Admins of this tenant, and operators."""
        return self.role is Role.OPERATOR or (
            self.role is Role.ADMIN and self.tenant_id == tenant_id
        )


class InvalidToken(Exception):
    """The token was refused; ``reason`` is safe to show and to audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeySource(Protocol):
    async def key_for(self, kid: str) -> PyJWK | None: ...


class StaticKeys:
    """Keys known in advance (the edge's own public keys)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = {k.key_id: k for k in PyJWKSet.from_dict(dict(jwks)).keys if k.key_id}

    async def key_for(self, kid: str) -> PyJWK | None:
        return self._keys.get(kid)


class JwksUrlKeys:
    """Keys of an issuer published at a JWKS URL *from settings*; refreshed on an unknown kid,
    at most once per ``min_refresh_s``, so a flood of bad kids cannot hammer the issuer."""

    def __init__(self, url: str, *, min_refresh_s: float = 30.0, timeout_s: float = 3.0) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            response = await client.get(self.url)
            response.raise_for_status()
            keys = PyJWKSet.from_dict(response.json()).keys
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._fetched_at = time.monotonic()

    async def key_for(self, kid: str) -> PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= self.min_refresh_s:
                try:
                    await self._refresh()
                except (httpx.HTTPError, ValueError, jwt.PyJWTError):
                    self._fetched_at = time.monotonic()
        return self._keys.get(kid)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that passed verification: what it proved and what must still hold."""

    principal: Principal
    issuer: str
    kid: str
    public_key: Any
    expires_at: int


class TokenVerifier:
    """Verifies a bearer token against the issuers configured for this service."""

    def __init__(
        self,
        *,
        issuers: Mapping[str, KeySource],
        audience: str = API_AUDIENCE,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_s: int = 30,
        remembered: int = 4096,
    ) -> None:
        if any(a.upper().startswith("HS") or a.lower() == "none" for a in algorithms):
            raise ValueError("only asymmetric algorithms may be accepted")
        self.issuers = dict(issuers)
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self.remembered = remembered
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """The token's principal, or ``InvalidToken`` saying why not."""
        seen = self._verified.get(token)
        if seen is not None:
            if await self._still_valid(seen):
                if token in self._verified:
                    self._verified.move_to_end(token)
                return seen.principal
            self._verified.pop(token, None)
        verified = await self._verify_signed(token)
        if self.remembered > 0:
            self._verified[token] = verified
            if len(self._verified) > self.remembered:
                self._verified.popitem(last=False)
        return verified.principal

    async def _still_valid(self, seen: _Verified) -> bool:
        """Not expired, and the issuer still has the key that verified it under its kid."""
        if time.time() > seen.expires_at + self.leeway_s:
            return False
        source = self.issuers.get(seen.issuer)
        key = await source.key_for(seen.kid) if source is not None else None
        return key is not None and bool(key.key == seen.public_key)

    async def _verify_signed(self, token: str) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token has no key id")
        issuer = unverified.get("iss")
        source = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if source is None or not isinstance(issuer, str):
            raise InvalidToken("unknown issuer")
        key = await source.key_for(kid)
        if key is None:
            raise InvalidToken("unknown key id")
        if key.algorithm_name != alg and not (alg == "EdDSA" and key.key_type == "OKP"):
            raise InvalidToken("algorithm does not match the key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "verify_nbf": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("wrong issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("bad signature") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("invalid token") from exc
        return _Verified(
            principal=_principal(claims, issuer, token),
            issuer=issuer,
            kid=kid,
            public_key=key.key,
            expires_at=int(claims["exp"]),
        )


def _principal(claims: Mapping[str, Any], issuer: str, token: str) -> Principal:
    try:
        tenant_id = uuid.UUID(str(claims["tenant_id"]))
        role = Role(claims["role"])
    except (ValueError, KeyError) as exc:
        raise InvalidToken("bad tenant_id or role claim") from exc
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("bad sub claim")
    return Principal(
        tenant_id=tenant_id,
        subject=subject,
        role=role,
        issuer=issuer,
        client_id=claims.get("client_id"),
        token_id=claims.get("jti"),
        issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        raw_token=token,
    )


OnDenied = Callable[[Request, str], Awaitable[None]]


def bearer_token(request: Request) -> str:
    """The bearer token of a request, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


def principal_dependency(
    verifier: TokenVerifier, on_denied: OnDenied | None = None
) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency yielding the verified ``Principal`` (401 otherwise)."""

    async def dependency(request: Request) -> Principal:
        try:
            token = bearer_token(request)
            return await verifier.verify(token)
        except (HTTPException, InvalidToken) as exc:
            reason = exc.reason if isinstance(exc, InvalidToken) else str(exc.detail)
            if on_denied is not None:
                await on_denied(request, reason)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=f"invalid token: {reason}",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None

    return dependency
