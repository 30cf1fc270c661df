"""TokenVerifier remembers verified tokens: not verified again, yet refused as soon as they expire
or their issuer no longer publishes the key that signed them."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from jwt import PyJWK
from tenantry_common.auth import EDGE_ISSUER, InvalidToken, TokenVerifier
from tenantry_common.testing.tokens import TestIssuer

pytestmark = pytest.mark.unit


class Keys:
    """A key source whose keys the test changes (rotation, retirement)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.keys = {k["kid"]: PyJWK(k) for k in jwks["keys"]}

    async def key_for(self, kid: str) -> PyJWK | None:
        return self.keys.get(kid)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tokens whose signature PyJWT checked."""
    checked: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("options", {}).get("verify_signature", True):
            checked.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return checked


def _verifier(issuer: TestIssuer, **options: Any) -> tuple[TokenVerifier, Keys]:
    keys = Keys(issuer.jwks)
    return TokenVerifier(issuers={EDGE_ISSUER: keys}, **options), keys


async def test_a_remembered_token_is_not_verified_again(decodes: list[str]) -> None:
    issuer = TestIssuer()
    verifier, _ = _verifier(issuer)
    tenant = uuid.uuid4()
    token = issuer.token(tenant_id=tenant, role="member")
    first = await verifier.verify(token)
    again = await verifier.verify(token)
    assert again == first
    assert again.tenant_id == tenant
    assert decodes == [token]


async def test_a_remembered_token_is_refused_once_its_key_is_retired(decodes: list[str]) -> None:
    issuer = TestIssuer()
    verifier, keys = _verifier(issuer)
    token = issuer.token(tenant_id=uuid.uuid4(), role="member")
    await verifier.verify(token)
    keys.keys.clear()
    with pytest.raises(InvalidToken, match="unknown key id"):
        await verifier.verify(token)


async def test_a_remembered_token_is_refused_when_its_kid_names_another_key() -> None:
    issuer, impostor = TestIssuer(), TestIssuer()
    verifier, keys = _verifier(issuer)
    token = issuer.token(tenant_id=uuid.uuid4(), role="member")
    await verifier.verify(token)
    # The issuer now publishes a different public key under the same kid.
    replaced = dict(impostor.jwks["keys"][0], kid=issuer.kid)
    keys.keys[issuer.kid] = PyJWK(replaced)
    with pytest.raises(InvalidToken, match="bad signature"):
        await verifier.verify(token)


async def test_a_remembered_token_is_refused_once_it_expires() -> None:
    issuer = TestIssuer()
    verifier, _ = _verifier(issuer, leeway_s=0)
    now = int(time.time())
    token = issuer.token(tenant_id=uuid.uuid4(), role="member", iat=now, exp=now + 1)
    await verifier.verify(token)
    time.sleep(2.1)  # the clock must pass exp: no cache window beyond it
    with pytest.raises(InvalidToken, match="token expired"):
        await verifier.verify(token)


async def test_only_the_most_recent_tokens_are_remembered(decodes: list[str]) -> None:
    issuer = TestIssuer()
    verifier, _ = _verifier(issuer, remembered=2)
    first, second, third = (issuer.token(tenant_id=uuid.uuid4(), role="member") for _ in range(3))
    for token in (first, second, first, third):  # `second` is now the least recent
        await verifier.verify(token)
    await verifier.verify(first)
    await verifier.verify(second)
    assert decodes == [first, second, third, second]


async def test_a_refused_token_is_not_remembered(decodes: list[str]) -> None:
    issuer, stranger = TestIssuer(), TestIssuer()
    verifier, _ = _verifier(issuer)
    forged = stranger.token(tenant_id=uuid.uuid4(), role="operator")
    forged = jwt.encode(
        jwt.decode(forged, options={"verify_signature": False}),
        stranger.key,
        algorithm="EdDSA",
        headers={"kid": issuer.kid},
    )
    for _ in range(2):
        with pytest.raises(InvalidToken, match="bad signature"):
            await verifier.verify(forged)
    assert decodes == [forged, forged]
