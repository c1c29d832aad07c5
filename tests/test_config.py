"""Settings: every source (YAML, environment, overrides) is validated, and no section drops an unknown key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.schemas import CATEGORY_MAX_BYTES, ID_MAX_BYTES, TEXT_MAX_BYTES, TITLE_MAX_BYTES
from server.config import (
    MAX_LISTENERS,
    MAX_WORKERS,
    GatewaySettings,
    RagSettings,
    RecommendSettings,
    Settings,
    available_cpus,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RECSTACK_* variable of the caller's shell leaks into these tests."""
    for name in os.environ:
        if name.startswith("RECSTACK_"):
            monkeypatch.delenv(name)


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def test_a_misspelt_nested_key_in_the_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"milvus\.urii\s+Extra inputs are not permitted"):
        load_settings(yaml_file(tmp_path, "milvus:\n  urii: http://milvus:19530\n"))


def test_a_misspelt_nested_key_in_the_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTACK_MILVUS__URII", "http://milvus:19530")
    with pytest.raises(ValidationError, match=r"milvus\.urii\s+Extra inputs are not permitted"):
        load_settings()


def test_a_misspelt_override_names_the_key() -> None:
    with pytest.raises(ValidationError, match=r"gateway\.portt\s+Extra inputs are not permitted"):
        load_settings(gateway={"portt": 50052})


def test_an_override_is_validated_like_the_other_sources() -> None:
    with pytest.raises(ValidationError, match=r"gateway\.port\s+Input should be less than or equal to 65535"):
        load_settings(gateway={"port": 70_000})


@pytest.mark.parametrize("section", sorted(Settings.model_fields))
def test_every_section_rejects_an_unknown_key(section: str) -> None:
    with pytest.raises(ValidationError, match=rf"{section}\.no_such_key"):
        Settings.model_validate({section: {"no_such_key": 1}})


def test_overrides_win_over_the_environment_which_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSTACK_GATEWAY__PORT", "6000")
    monkeypatch.setenv("RECSTACK_MILVUS__URI", "http://from-env:19530")
    path = yaml_file(tmp_path, "gateway:\n  port: 5000\n  host: 0.0.0.0\nmilvus:\n  uri: http://from-file:1\n")
    settings = load_settings(path, gateway={"port": 7000})
    assert (settings.gateway.port, settings.gateway.host) == (7000, "0.0.0.0")
    assert settings.milvus.uri == "http://from-env:19530"


def test_the_shipped_production_config_loads() -> None:
    settings = load_settings(ROOT / "configs" / "production.yaml")
    assert settings.milvus.uri == "http://milvus:19530" and settings.rag.default_k == 3


def test_id_and_category_limits_default_to_and_cannot_exceed_what_milvus_stores() -> None:
    limits = GatewaySettings()
    assert (limits.max_id_bytes, limits.max_category_bytes) == (ID_MAX_BYTES, CATEGORY_MAX_BYTES)
    with pytest.raises(ValidationError, match="max_id_bytes"):
        GatewaySettings(max_id_bytes=ID_MAX_BYTES + 1)
    with pytest.raises(ValidationError, match="max_category_bytes"):
        GatewaySettings(max_category_bytes=CATEGORY_MAX_BYTES + 1)


def test_text_limits_cannot_exceed_what_milvus_stores_at_four_bytes_a_character() -> None:
    with pytest.raises(ValidationError, match="max_text_chars"):
        GatewaySettings(max_text_chars=TITLE_MAX_BYTES // 4 + 1)
    with pytest.raises(ValidationError, match="max_upsert_passage_chars"):
        GatewaySettings(max_upsert_passage_chars=TEXT_MAX_BYTES // 4 + 1)


def test_the_default_number_of_passages_must_be_allowed() -> None:
    with pytest.raises(ValidationError, match=r"default_k \(9\) must not exceed max_k \(8\)"):
        RagSettings(default_k=9, max_k=8)


def test_one_gateway_process_by_default_and_one_per_usable_cpu_for_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().worker_processes == 1
    assert GatewaySettings(workers=3).worker_processes == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)  # e.g. a container's cpuset
    assert GatewaySettings(workers=0).worker_processes == 3


@pytest.mark.parametrize("workers", [-1, MAX_WORKERS + 1, "many"])
def test_a_bad_number_of_workers_is_rejected_naming_the_key(workers: object) -> None:
    with pytest.raises(ValidationError, match=r"gateway\.workers"):
        load_settings(gateway={"workers": workers})


def test_production_runs_a_worker_per_cpu() -> None:
    settings = load_settings(ROOT / "configs" / "production.yaml")
    assert settings.gateway.workers == 0 and settings.gateway.worker_processes == available_cpus()
    assert settings.gateway.listeners == 4 and load_settings().gateway.listeners == 1  # 1 unless configured


@pytest.mark.parametrize("listeners", [0, MAX_LISTENERS + 1, "several"])
def test_a_bad_number_of_listeners_is_rejected_naming_the_key(listeners: object) -> None:
    with pytest.raises(ValidationError, match=r"gateway\.listeners"):
        load_settings(gateway={"listeners": listeners})


def test_the_ann_stage_asks_for_the_reranked_pool_only_when_the_ranking_is_served(tmp_path: Path) -> None:
    """The gateway's rule, which the benchmarks' direct Milvus calls follow to do the same work."""
    weights = tmp_path / "ranking.json"
    missing = RecommendSettings(ranking_weights=weights)
    assert not missing.serves_ranking and missing.min_candidates() == 0
    weights.write_text("{}")
    served = RecommendSettings(ranking_weights=weights, ranking_candidates=70)
    assert served.serves_ranking and served.min_candidates() == 70
    content = RecommendSettings(ranking_weights=weights, ranking="content")
    assert not content.serves_ranking and content.min_candidates() == 0
