"""The reliability report's arithmetic (benchmarks/reliability.py) on made-up outcomes, and its results file."""

from __future__ import annotations

import json

from benchmarks.reliability import HealthWatch, KillReport, Outcome, Part, write_section

EVERY = frozenset({"recommend", "search", "upsert", "answer"})


def health(seen: list[tuple[float, str]]) -> HealthWatch:
    watch = HealthWatch("127.0.0.1:1", "svc")
    watch.seen = seen
    return watch


def report(outcomes: list[Outcome], affected: frozenset[str] = EVERY) -> dict:
    part = Part("milvus", pid=lambda: 0, restart=lambda: None, affected=affected, health_service="svc")
    seen = [(9.0, "SERVING"), (10.5, "NOT_SERVING"), (21.0, "NOT_SERVING"), (23.0, "SERVING")]
    return KillReport(
        part,
        killed=10.0,
        restarted=20.0,
        ready=22.0,
        until=30.0,
        outcomes=outcomes,
        health=health(seen),
        gateway_pid_unchanged=True,
    ).to_dict()


def test_outage_codes_first_unavailable_and_recovery() -> None:
    outcomes = [
        Outcome("search", 9.0, 9.1, "OK"),
        Outcome("search", 9.9, 10.25, "UNAVAILABLE"),  # in flight at the kill
        Outcome("recommend", 11.0, 16.0, "DEADLINE_EXCEEDED"),
        Outcome("upsert", 12.0, 12.1, "INTERNAL"),
        Outcome("search", 20.5, 20.6, "UNAVAILABLE"),  # after the restart, before ready
        Outcome("search", 22.5, 22.6, "OK"),
        Outcome("recommend", 23.0, 24.0, "UNAVAILABLE"),  # the last error
        Outcome("search", 25.0, 25.1, "OK"),
    ]
    result = report(outcomes)
    assert result["codes"] == {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1, "INTERNAL": 1}
    assert result["unexpected_codes"] == ["INTERNAL"]
    assert result["first_unavailable_ms"] == 250.0
    assert result["first_ok_s"] == 2.6
    assert result["recovery_s"] == 4.0
    assert result["errors_after_restart"] == {"UNAVAILABLE": 2}
    assert result["health_during"] == ["NOT_SERVING"]
    assert result["serving_again_s"] == 3.0
    assert result["health_after"] == "SERVING"


def test_unaffected_rpcs_and_answer_streams_in_flight_are_reported_apart() -> None:
    outcomes = [
        Outcome("answer", 8.0, 10.5, "UNAVAILABLE"),  # a stream in flight at the kill
        Outcome("search", 11.0, 11.1, "UNAVAILABLE"),  # Search does not need the LLM
        Outcome("answer", 21.0, 23.0, "OK"),
    ]
    result = report(outcomes, affected=frozenset({"answer"}))
    assert result["answer_streams_in_flight"] == {"UNAVAILABLE": 1}
    assert result["unaffected_rpc_errors"] == {"UNAVAILABLE": 1}
    assert result["recovery_s"] == 0.0


def test_sections_are_written_independently(tmp_path) -> None:
    path = tmp_path / "reliability.json"
    path.write_text(json.dumps({"fuzz": {"examples": 100, "internal_errors": 0}}))
    write_section("soak", {"minutes": 2, "errors": 0}, path)
    write_section("soak", {"minutes": 3, "errors": 1}, path)
    data = json.loads(path.read_text())
    assert data == {"fuzz": {"examples": 100, "internal_errors": 0}, "soak": {"minutes": 3, "errors": 1}}
    markdown = path.with_suffix(".md").read_text()
    assert "## fuzz" in markdown and "| minutes | `3` |" in markdown
