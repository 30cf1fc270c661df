"""The local stack's topics (``scripts/stack.py``): one partition each on the single local
broker, except ``chat.responses``, whose partitions the edge replicas lease by number."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tenantry_common.topics import CHAT_RESPONSES, all_topics_with_dlqs

pytestmark = pytest.mark.unit

STACK = Path(__file__).resolve().parents[2] / "scripts" / "stack.py"


def _stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenantry_local_stack", STACK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_local_stack_creates_every_topic_with_one_partition_but_the_reply_topic() -> None:
    local = {t.name: t for t in _stack().local_topics()}
    declared = {t.name: t for t in all_topics_with_dlqs()}
    assert local.keys() == declared.keys()
    for name, topic in local.items():
        assert topic.config == declared[name].config, name
        expected = declared[name].partitions if name == CHAT_RESPONSES.name else 1
        assert topic.partitions == expected, name
    assert local[CHAT_RESPONSES.name].partitions == CHAT_RESPONSES.partitions > 1
