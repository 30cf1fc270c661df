"""The model catalogue's settings: fallbacks name other catalogue models."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from tenantry_common.settings import LOCAL_MODEL, CommonSettings, ModelSpec, default_catalogue

pytestmark = pytest.mark.unit


def _spec(**extra: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "base_url": "http://127.0.0.1:1/v1",
            "input_price_micros_per_mtok": 1,
            "output_price_micros_per_mtok": 1,
            "context_window": 1024,
        }
        | extra
    )


def test_a_fallback_to_another_catalogue_model_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    models = default_catalogue() | {"primary": _spec(fallbacks=[LOCAL_MODEL])}
    monkeypatch.setenv(
        "TENANTRY_MODELS", json.dumps({k: v.model_dump() for k, v in models.items()})
    )
    assert CommonSettings().models["primary"].fallbacks == [LOCAL_MODEL]


@pytest.mark.parametrize("fallback", ["primary", "nowhere"])
def test_a_fallback_to_itself_or_outside_the_catalogue_is_refused(fallback: str) -> None:
    with pytest.raises(ValidationError, match=f"fallback '{fallback}' must be another"):
        CommonSettings(models={"primary": _spec(fallbacks=[fallback])})


def test_at_most_three_fallbacks() -> None:
    with pytest.raises(ValidationError, match="fallbacks"):
        _spec(fallbacks=["a", "b", "c", "d"])
