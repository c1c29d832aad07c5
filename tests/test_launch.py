"""`python -m server`'s process setup (server/launch.py), without starting a gateway."""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any

import pytest

from server import launch
from server.config import Settings


@pytest.mark.parametrize(("preset", "expected"), [(None, "false"), ("true", "true")])
def test_the_gateway_turns_the_tokenizer_thread_pool_off_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, preset: str | None, expected: str
) -> None:
    """The request path tokenizes a few texts at a time, where the pool costs more CPU than it saves; an operator's
    own setting wins."""
    if preset is None:
        monkeypatch.delenv(launch.TOKENIZERS_PARALLELISM, raising=False)
    else:
        monkeypatch.setenv(launch.TOKENIZERS_PARALLELISM, preset)
    seen: dict[str, str | None] = {}

    def run(coroutine: Coroutine[Any, Any, None]) -> None:
        seen["at_start"] = os.environ.get(launch.TOKENIZERS_PARALLELISM)
        coroutine.close()

    monkeypatch.setattr("uvloop.run", run)
    launch.serve_here(Settings(), worker=None)
    assert seen["at_start"] == expected
