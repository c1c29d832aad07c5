"""Rollout and rollback on the real stack (Milvus 2.3.5, Triton, the gateway process) under a steady
stream of Recommends: no request fails, and each response names the version that served it."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

import contract
from contract.layout import ServingLayout
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.config import Settings
from server.rollout import Rollout, TritonNewsEncoders
from server.versions import ModelVersion

pytestmark = pytest.mark.stack
REFRESH_S = 0.2


class RecommendLoop:
    """Recommends from a background thread until stopped; counts the versions served and the failures."""

    def __init__(self, address: str, history: list[str]) -> None:
        self.address, self.history = address, history
        self.served: Counter[str] = Counter()
        self.failures: list[grpc.RpcError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            request = pb.RecommendRequest(user_id="U1", history=[pb.HistoryItem(id=item) for item in self.history], k=5)
            while not self._stop.is_set():
                try:
                    self.served[stub.Recommend(request, timeout=10).model_version] += 1
                except grpc.RpcError as error:
                    self.failures.append(error)

    def until_served(self, version: str, timeout_s: float = 30.0) -> None:
        """Wait until `version` has served a few requests more than it had."""
        wanted = self.served[version] + 5
        deadline = time.monotonic() + timeout_s
        while self.served[version] < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.served[version] >= wanted, f"version {version!r} not served: {self.served}"

    def __enter__(self) -> RecommendLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def two_versions(
    tiny_serving: ServingLayout, tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
):
    """A copy of the tiny serving layout (version 1 of every model) and an NRMS checkpoint with other weights."""
    from training.checkpoint import Checkpoint

    root = tmp_path_factory.mktemp("versions")
    layout = ServingLayout(root / "serving")
    shutil.copytree(tiny_serving.root, layout.root)
    changed = Checkpoint.load(tiny_checkpoints["nrms"])
    changed.state_dict = {k: v * 1.5 if v.is_floating_point() else v for k, v in changed.state_dict.items()}
    return layout, changed.save(root / "nrms_v2.pt")


def test_rollout_and_rollback_under_load_fail_no_request(two_versions, tiny_checkpoints, tiny_data, tmp_path) -> None:
    from devstack.local import LocalStack, StackConfig
    from export.catalog import index_catalog
    from export.models import export_all

    layout, nrms_v2 = two_versions
    config = StackConfig(
        triton_repo=layout.repository("cpu"),
        tokenizer_dir=layout.tokenizers,
        state_dir=tmp_path / "stack",
        gateway_port=0,
        metrics_port=0,
        llm=False,
        gateway_env={"RECSTACK_ROLLOUT__REFRESH_S": str(REFRESH_S)},
    )
    with LocalStack(config) as stack:
        index_catalog(stack.gateway_address, tiny_data.root, batch=128)
        report = export_all(nrms_v2, tiny_checkpoints["two_tower"], layout, tmp_path / "export.json")
        assert report["versions"][contract.NEWS_ENCODER] == 2
        settings = Settings(
            milvus={"uri": stack.milvus.uri},
            triton={"url": stack.triton.grpc_url, "tokenizer_dir": str(layout.tokenizers)},
            rollout={"refresh_s": REFRESH_S},
        )
        rollout = Rollout(settings, TritonNewsEncoders(settings))
        history = [row["id"] for row in rollout.client.query("news", filter="", output_fields=["id"], limit=3)]
        try:
            with RecommendLoop(stack.gateway_address, history) as load:
                load.until_served("")
                check = rollout.roll_out(2)
                assert check.passed and check.rows == check.expected_rows > 0
                load.until_served("2")
                assert rollout.roll_back().control == ModelVersion("news", "1")
                load.until_served("1")
            assert load.failures == []
            assert set(load.served) == {"", "1", "2"}
        finally:
            rollout.close()
