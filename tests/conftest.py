"""Session fixtures shared across test modules: a tiny offline dataset and tiny trained checkpoints.

Everything is built from scratch in a temporary directory (nothing from `make demo` is reused), so
`make test` passes on a fresh clone. Sizes are chosen for seconds, not quality.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training.checkpoint import Checkpoint
from training.config import NRMSRunConfig, TwoTowerRunConfig, load_run_config
from training.data.build import DatasetPaths, build_datasets
from training.data.mind_sim import MindSimConfig

# Property tests check results, not speed: on a shared 2-core machine an example can take longer than
# hypothesis's default 200 ms deadline while a benchmark or a server runs beside the tests.
settings.register_profile("recstack", deadline=None)
settings.load_profile("recstack")

TINY_MIND = MindSimConfig(n_users=60, min_candidates=5, max_candidates=12)
TINY_ARTICLES = 240

TINY_NRMS = [
    "model.word_dim=32",
    "model.pretrained_embeddings=false",
    "model.freeze_embeddings=false",
    "model.heads=2",
    "model.head_dim=8",
    "model.attention_hidden=16",
    "model.max_title_tokens=16",
    "model.max_history=10",
    "train.epochs=2",
    "train.batch_size=32",
    "train.threads=1",
]
TINY_TWO_TOWER = [
    "model.word_dim=32",
    "model.pretrained_embeddings=false",
    "model.hidden_dim=32",
    "model.heads=2",
    "model.max_query_tokens=16",
    "model.max_passage_tokens=32",
    "train.epochs=2",
    "train.batch_size=32",
    "train.threads=1",
]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (`pytest.mark.anyio`) run on asyncio, the loop the gateway uses."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def one_event_loop_for_the_session(anyio_backend: str) -> AsyncIterator[None]:
    """Keeps anyio's test runner, and so its event loop, open for the whole session, as the gateway keeps one loop
    for life. A gRPC call cancelled at the end of a test completes a moment later; with a loop per test, that loop
    was sometimes closed by then and grpc-aio's poller raised "Event loop is closed" inside the next test."""
    yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    """MIND- and MS MARCO-format sets from a few hundred real articles and 60 simulated users."""
    return build_datasets(tmp_path_factory.mktemp("data"), seed=0, mind=TINY_MIND, max_articles=TINY_ARTICLES)


def tiny_nrms_run(data: DatasetPaths, *extra: str) -> NRMSRunConfig:
    return load_run_config(None, "nrms", [*TINY_NRMS, f"data_dir={data.mind}", "name=tiny_nrms", *extra])


def tiny_two_tower_run(data: DatasetPaths, *extra: str) -> TwoTowerRunConfig:
    return load_run_config(
        None, "two_tower", [*TINY_TWO_TOWER, f"data_dir={data.msmarco}", "name=tiny_two_tower", *extra]
    )


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_data: DatasetPaths, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny NRMS and two-tower checkpoints trained on `tiny_data` (random-init word vectors)."""
    from training.train_nrms import train_nrms
    from training.train_two_tower import train_two_tower

    out = tmp_path_factory.mktemp("checkpoints")
    return {
        "nrms": train_nrms(tiny_nrms_run(tiny_data)).save(out / "nrms.pt"),
        "two_tower": train_two_tower(tiny_two_tower_run(tiny_data)).save(out / "two_tower.pt"),
    }


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints: dict[str, Path]) -> dict[str, Checkpoint]:
    return {kind: Checkpoint.load(path) for kind, path in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def tiny_serving(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The tiny checkpoints exported: ONNX graphs, both Triton repositories and the tokenizer files."""
    from contract.layout import ServingLayout
    from export.models import export_all

    layout = ServingLayout(tmp_path_factory.mktemp("serving"))
    export_all(tiny_checkpoints["nrms"], tiny_checkpoints["two_tower"], layout, layout.root / "export.json")
    return layout


FEEDBACK_DIR = "feedback"  # the stack gateway's feedback log, inside the stack's state directory


@pytest.fixture(scope="session")
def stack(tiny_serving, tiny_data: DatasetPaths, tmp_path_factory: pytest.TempPathFactory):
    """The real local stack (Milvus, Triton, the LLM server, the gateway) with the tiny catalog indexed.

    Tests that stop a part of it (outages) must start it again before they return.
    """
    from devstack.local import LocalStack, StackConfig
    from export.catalog import index_catalog

    state_dir = tmp_path_factory.mktemp("stack")
    config = StackConfig(
        triton_repo=tiny_serving.repository("cpu"),
        tokenizer_dir=tiny_serving.tokenizers,
        ranking_weights=tiny_serving.ranking,
        state_dir=state_dir,
        gateway_port=0,
        metrics_port=0,
        gateway_env={
            "RECSTACK_RAG__MIN_SCORE": "-1",  # tiny random models: every passage "relevant"
            "RECSTACK_FEEDBACK__LOG_DIR": str(state_dir / FEEDBACK_DIR),  # not the repository's artifacts/
        },
    )
    with LocalStack(config) as running:
        index_catalog(running.gateway_address, tiny_data.root, batch=128)
        yield running


@pytest.fixture(scope="session")
def gateway(stack):
    """A blocking stub for the running gateway."""
    import grpc

    from recstack.v1 import gateway_pb2_grpc

    with grpc.insecure_channel(stack.gateway_address) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)
