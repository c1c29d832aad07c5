"""The local LLM server's counters, served at `GET /metrics` in Prometheus' text format.

Tests read them (`LocalLLMServer.counts`) to see what the server did with a request: whether a
generation ran to the end, was cancelled (and how many tokens it had sampled by then), or never took
the model.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "llm_requests"
SAMPLED_TOKENS = "llm_sampled_tokens"
RAN = ("finished", "cancelled", "failed")  # outcomes of a request that took the model
NEVER_RAN = ("left_queue", "refused")  # the client left while queued; the queue was full


class RunnerMetrics:
    """Requests by outcome, and the tokens sampled by the generations that finished or were cancelled."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            REQUESTS,
            "Generation requests by outcome: finished, cancelled (client gone mid-generation), failed, "
            "left_queue (client gone before the model was free), refused (queue full)",
            ["outcome"],
            registry=self.registry,
        )
        self.sampled_tokens = Counter(
            SAMPLED_TOKENS,
            "Tokens sampled by generations that finished or were cancelled, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in (*RAN, *NEVER_RAN):  # exported at zero from the start
            self.requests.labels(outcome)
        for outcome in ("finished", "cancelled"):
            self.sampled_tokens.labels(outcome)

    def count(self, outcome: str, sampled_tokens: int | None = None) -> None:
        self.requests.labels(outcome).inc()
        if sampled_tokens is not None:
            self.sampled_tokens.labels(outcome).inc(sampled_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def counts_by_outcome(exposition: str, counter: str) -> dict[str, float]:
    """One counter of a `/metrics` text by its `outcome` label, e.g. {"finished": 3.0, "cancelled": 1.0, ...}."""
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == f"{counter}_total"
    }
