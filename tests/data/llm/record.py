"""Re-record the LLM stream fixtures from the real local server (SmolLM2-135M, greedy decoding).

    .venv/bin/python tests/data/llm/record.py

Writes `{ollama,openai}_{stop,length}.{ndjson,sse}` (the raw streamed bodies) and `expected.json`
(text, finish reason and token counts of the same requests asked WITHOUT streaming: an oracle
independent of the stream parsers). The `*_bad_json`, `*_truncated` and `*_error` files are
hand-edited copies of the recorded streams and are not rewritten here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx

from devstack.llm import LocalLLMServer
from server.llm import build_rag_messages

HERE = Path(__file__).parent
PASSAGES = [
    (
        "P12_0",
        "Eiffel Tower",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It was designed "
        "by Gustave Eiffel's company and completed in 1889 for the World's Fair. It is 330 metres tall.",
    ),
    (
        "P7_1",
        "Mount Everest",
        "Mount Everest is Earth's highest mountain above sea level, in the Himalayas on the border between "
        "Nepal and China. Its elevation is 8,849 metres.",
    ),
]
QUESTION = "When was the Eiffel Tower completed?"
MAX_TOKENS = {"stop": 64, "length": 5}


def bodies(model: str, max_tokens: int) -> dict[str, tuple[str, dict]]:
    messages = [{"role": m.role, "content": m.content} for m in build_rag_messages(QUESTION, PASSAGES)]
    ollama = {"model": model, "messages": messages, "options": {"num_predict": max_tokens, "temperature": 0}}
    openai = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    return {"ollama": ("/api/chat", ollama), "openai": ("/v1/chat/completions", openai)}


def expected_from(protocol: str, answer: dict) -> dict:
    if protocol == "ollama":
        return {
            "text": answer["message"]["content"],
            "finish_reason": answer["done_reason"],
            "prompt_tokens": answer["prompt_eval_count"],
            "completion_tokens": answer["eval_count"],
        }
    return {
        "text": answer["choices"][0]["message"]["content"],
        "finish_reason": answer["choices"][0]["finish_reason"],
        "prompt_tokens": answer["usage"]["prompt_tokens"],
        "completion_tokens": answer["usage"]["completion_tokens"],
    }


def main() -> None:
    expected = {}
    with tempfile.TemporaryDirectory() as tmp, LocalLLMServer(log_path=Path(tmp) / "llm.log") as server:
        http = httpx.Client(base_url=server.url, timeout=120)
        for case, max_tokens in MAX_TOKENS.items():
            for protocol, (path, body) in bodies(server.config.model_name, max_tokens).items():
                streamed = http.post(path, json={**body, "stream": True})
                streamed.raise_for_status()
                suffix = "ndjson" if protocol == "ollama" else "sse"
                (HERE / f"{protocol}_{case}.{suffix}").write_bytes(streamed.content)
                answer = http.post(path, json={**body, "stream": False}).raise_for_status().json()
                expected[f"{protocol}_{case}"] = expected_from(protocol, answer)
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
