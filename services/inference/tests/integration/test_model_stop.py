"""A catalogue entry's stop sequences reach the real local model server, whole and streamed."""

from __future__ import annotations

import pytest
from tenantry_common.events import ChatMessage
from tenantry_common.settings import LOCAL_MODEL, PROMPT_MARKUP_STOPS, default_catalogue
from tenantry_inference.llm import ModelGateway

pytestmark = pytest.mark.integration

COUNT = [
    ChatMessage(role="user", content="Count from one to twenty in words, separated by spaces.")
]


async def _answer(gateway: ModelGateway, *, stream: bool) -> str:
    text = ""
    async for piece in gateway.generate(
        model=LOCAL_MODEL, messages=COUNT, max_tokens=40, temperature=0.0, stream=stream
    ):
        text += piece.text
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_answer_ends_where_a_stop_sequence_of_its_model_begins(
    model_server_url: str, stream: bool
) -> None:
    local = default_catalogue()[LOCAL_MODEL]
    assert local.stop == list(PROMPT_MARKUP_STOPS), "the local model stops at the prompt's fences"

    def gateway(stop: list[str]) -> ModelGateway:
        spec = local.model_copy(update={"base_url": model_server_url, "stop": stop})
        return ModelGateway(
            catalogue={LOCAL_MODEL: spec}, api_keys={}, timeout_s=120, max_retries=0
        )

    free, stopped = gateway([]), gateway([" "])
    try:
        counted = await _answer(free, stream=stream)
        cut = await _answer(stopped, stream=stream)
    finally:
        await free.aclose()
        await stopped.aclose()
    assert " " in counted.strip(), f"without a stop the answer goes on: {counted!r}"
    assert cut.strip(), "the answer up to the first space"
    assert " " not in cut.strip(), f"a space would have stopped it: {cut!r}"
    assert counted.strip().startswith(cut.strip()), "the same answer, cut short"
