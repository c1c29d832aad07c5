"""The cpu-profile repository served by the REAL bundled tritonserver: the four contract models as tiny graphs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from triton_fixtures import CONTRACT_SPECS, SPECS, VOCAB, export_tiny_model, infer_inputs, run_onnx, sample_inputs

import contract
from contract import QUERY_ENCODER, USER_ENCODER
from devstack.triton import TritonServer
from export.triton_repo import TritonOptions, write_repository
from server.config import TritonSettings
from server.errors import DependencyTimeout, DependencyUnavailable
from server.triton import TritonEncoders

pytestmark = pytest.mark.stack

TIMEOUT_S = 10.0
# A longer queue delay than the default makes the concurrency tests' batching deterministic enough.
OPTIONS = TritonOptions(max_queue_delay_us=2000)


@dataclass
class Served:
    server: TritonServer
    client: grpcclient.InferenceServerClient
    onnx: dict[str, Path]  # model name -> the graph version 1 serves
    repo: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("triton")
    onnx = {spec.name: export_tiny_model(spec, base / f"{spec.name}.onnx") for spec in CONTRACT_SPECS}
    write_repository(base / "repo", [(SPECS[name], path) for name, path in onnx.items()], "cpu", OPTIONS)
    with TritonServer(base / "repo", list(onnx), base / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield Served(server, client, onnx, base / "repo")
        client.close()


def infer(served: Served, model: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    result = served.client.infer(model, infer_inputs(arrays), client_timeout=TIMEOUT_S)
    return result.as_numpy(SPECS[model].output.name)


async def infer_many(served: Served, model: str, requests: list[dict[str, np.ndarray]]) -> list:
    """Send all requests at once through the aio client; each item is an array or the exception raised."""
    async with grpcaio.InferenceServerClient(served.server.grpc_url) as client:

        async def one(arrays: dict[str, np.ndarray]) -> np.ndarray:
            result = await client.infer(model, infer_inputs(arrays), client_timeout=TIMEOUT_S)
            return result.as_numpy(SPECS[model].output.name)

        return await asyncio.gather(*(one(arrays) for arrays in requests), return_exceptions=True)


def statistics(served: Served, model: str, at_least: int = 0) -> tuple[int, int]:
    """(inference_count, execution_count) of `model`, once inference_count reaches `at_least`.

    Triton updates the statistics just after it sends a response, so they can trail the answers briefly.
    """
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        stats = served.client.get_inference_statistics(model, client_timeout=TIMEOUT_S).model_stats[0]
        if stats.inference_count >= at_least or time.monotonic() > deadline:
            return stats.inference_count, stats.execution_count
        time.sleep(0.01)


def test_server_and_every_model_are_ready_on_grpc_http_and_metrics(served: Served) -> None:
    assert served.client.is_server_live(client_timeout=TIMEOUT_S)
    assert served.client.is_server_ready(client_timeout=TIMEOUT_S)
    for spec in CONTRACT_SPECS:
        assert served.client.is_model_ready(spec.name, client_timeout=TIMEOUT_S)
    assert httpx.get(f"{served.server.http_url}/v2/health/ready", timeout=TIMEOUT_S).status_code == 200
    metrics = httpx.get(served.server.metrics_url, timeout=TIMEOUT_S).text
    assert f'nv_inference_request_success{{model="{QUERY_ENCODER}"' in metrics


@pytest.mark.parametrize("spec", CONTRACT_SPECS, ids=lambda spec: spec.name)
def test_metadata_and_config_match_the_spec(served: Served, spec) -> None:
    metadata = served.client.get_model_metadata(spec.name, client_timeout=TIMEOUT_S)
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        (t.name, t.dtype, [-1, *t.dims]) for t in spec.inputs
    ]
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        (spec.output.name, spec.output.dtype, [-1, *spec.output.dims])
    ]
    config = served.client.get_model_config(spec.name, client_timeout=TIMEOUT_S).config
    assert config.backend == "python"
    assert config.max_batch_size == OPTIONS.max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == OPTIONS.max_queue_delay_us


@pytest.mark.parametrize("spec", CONTRACT_SPECS, ids=lambda spec: spec.name)
@pytest.mark.parametrize(("batch", "length"), [(1, 1), (1, 9), (5, 4)])
def test_inference_matches_onnxruntime_on_the_same_graph(served: Served, spec, batch: int, length: int) -> None:
    arrays = sample_inputs(spec, batch, length, np.random.default_rng(batch * 100 + length))
    expected = run_onnx(served.onnx[spec.name], arrays)
    got = infer(served, spec.name, arrays)
    assert got.shape == (batch, *spec.output.dims)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_all_zero_history_mask_gets_the_cold_start_vector(served: Served) -> None:
    spec = SPECS[USER_ENCODER]
    arrays = sample_inputs(spec, batch=3, length=4, rng=np.random.default_rng(7))
    arrays["history_mask"][:] = 0
    got = infer(served, USER_ENCODER, arrays)
    np.testing.assert_allclose(got, run_onnx(served.onnx[USER_ENCODER], arrays), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))  # histories differ, answers do not


def test_concurrent_requests_are_batched_dynamically(served: Served) -> None:
    spec = SPECS[QUERY_ENCODER]
    rng = np.random.default_rng(11)
    requests = [sample_inputs(spec, batch=1, length=6, rng=rng) for _ in range(64)]
    inferences_before, executions_before = statistics(served, QUERY_ENCODER)
    answers = asyncio.run(infer_many(served, QUERY_ENCODER, requests))
    inferences, executions = statistics(served, QUERY_ENCODER, at_least=inferences_before + 64)
    assert not [a for a in answers if isinstance(a, Exception)]
    assert inferences - inferences_before == 64
    assert executions - executions_before < 64


def test_requests_of_different_lengths_are_batched_and_each_gets_its_own_answer(served: Served) -> None:
    """Ragged batching: every request has its own length, so any execution of two or more is ragged."""
    rng = np.random.default_rng(12)
    for model in (QUERY_ENCODER, USER_ENCODER):
        batch_sizes = [1 + i % 3 for i in range(64)]
        requests = [
            sample_inputs(SPECS[model], batch=batch, length=1 + i, rng=rng) for i, batch in enumerate(batch_sizes)
        ]
        rows = sum(batch_sizes)
        inferences_before, executions_before = statistics(served, model)
        answers = asyncio.run(infer_many(served, model, requests))
        inferences, executions = statistics(served, model, at_least=inferences_before + rows)
        for arrays, answer in zip(requests, answers, strict=True):
            np.testing.assert_allclose(answer, run_onnx(served.onnx[model], arrays), rtol=0, atol=1e-5)
        assert inferences - inferences_before == rows
        assert executions - executions_before < 64


def _good() -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}


MALFORMED = {
    "wrong dtype": (QUERY_ENCODER, {**_good(), "input_ids": np.ones((1, 4), np.int32)}, "data-type is 'INT32'"),
    "wrong rank": (QUERY_ENCODER, {**_good(), "input_ids": np.ones((1, 1, 4), np.int64)}, "unexpected shape"),
    "missing input": (QUERY_ENCODER, {"input_ids": np.ones((1, 4), np.int64)}, "missing required input"),
    "mask length differs": (
        QUERY_ENCODER,
        {**_good(), "attention_mask": np.ones((1, 3), np.int64)},
        "disagree on the length of dim 1",
    ),
    "empty sequence": (QUERY_ENCODER, {k: v[:, :0] for k, v in _good().items()}, "dynamic dims need length >= 1"),
    "negative token id": (QUERY_ENCODER, {**_good(), "input_ids": -np.ones((1, 4), np.int64)}, "negative values"),
    "token outside vocabulary": (QUERY_ENCODER, {**_good(), "input_ids": np.full((1, 4), VOCAB, np.int64)}, "Gather"),
    "NaN in history": (
        USER_ENCODER,
        {"history": np.full((1, 2, 16), np.nan, np.float32), "history_mask": np.ones((1, 2), np.int64)},
        "'history' contains NaN",
    ),
}


@pytest.mark.parametrize(("model", "arrays", "message"), MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_request_gets_a_clear_error_and_the_server_keeps_answering(
    served: Served, model: str, arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(grpcclient.InferenceServerException, match=message) as error:
        served.client.infer(model, infer_inputs(arrays), client_timeout=TIMEOUT_S)
    assert model in error.value.message()
    assert served.client.is_server_live(client_timeout=TIMEOUT_S)
    np.testing.assert_allclose(
        infer(served, QUERY_ENCODER, _good()), run_onnx(served.onnx[QUERY_ENCODER], _good()), rtol=0, atol=1e-5
    )


def test_a_bad_request_inside_a_batch_fails_alone(served: Served) -> None:
    spec = SPECS[QUERY_ENCODER]
    rng = np.random.default_rng(13)
    requests = [sample_inputs(spec, batch=1, length=1 + i % 5, rng=rng) for i in range(32)]
    bad = {3: MALFORMED["mask length differs"][1], 17: MALFORMED["token outside vocabulary"][1]}
    for index, arrays in bad.items():
        requests[index] = arrays
    answers = asyncio.run(infer_many(served, QUERY_ENCODER, requests))
    for index, (arrays, answer) in enumerate(zip(requests, answers, strict=True)):
        if index in bad:
            assert isinstance(answer, grpcclient.InferenceServerException)
        else:
            np.testing.assert_allclose(answer, run_onnx(served.onnx[QUERY_ENCODER], arrays), rtol=0, atol=1e-5)


def test_hot_swap_to_a_new_version_drops_no_request(served: Served, tmp_path: Path) -> None:
    """Runs last in this module: afterwards query_encoder serves version 2."""
    spec = SPECS[QUERY_ENCODER]
    arrays = sample_inputs(spec, batch=2, length=5, rng=np.random.default_rng(14))
    version_2 = export_tiny_model(spec, tmp_path / "v2.onnx", seed=1)
    expected_1, expected_2 = run_onnx(served.onnx[QUERY_ENCODER], arrays), run_onnx(version_2, arrays)
    assert np.abs(expected_1 - expected_2).max() > 1e-3

    failures: list[Exception] = []
    answers: list[np.ndarray] = []
    stop = threading.Event()

    def send_continuously() -> None:
        with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
            while not stop.is_set():
                try:
                    result = client.infer(QUERY_ENCODER, infer_inputs(arrays), client_timeout=TIMEOUT_S)
                    answers.append(result.as_numpy(spec.output.name))
                except grpcclient.InferenceServerException as error:
                    failures.append(error)

    sender = threading.Thread(target=send_continuously)
    sender.start()
    try:
        while not answers and not failures and sender.is_alive():
            stop.wait(0.01)
        write_repository(served.repo, [(spec, version_2)], "cpu", OPTIONS)
        answered_before_load = len(answers)
        served.server.load(QUERY_ENCODER)
        answered_during_load = len(answers) - answered_before_load
        stop.wait(0.3)
    finally:
        stop.set()
        sender.join()

    assert not failures
    assert answered_during_load > 0  # version 1 kept serving while version 2 loaded
    metadata = served.client.get_model_metadata(QUERY_ENCODER, client_timeout=TIMEOUT_S)
    assert list(metadata.versions) == ["2"]
    np.testing.assert_allclose(answers[-1], expected_2, rtol=0, atol=1e-5)
    np.testing.assert_allclose(infer(served, QUERY_ENCODER, arrays), expected_2, rtol=0, atol=1e-5)
    assert all(
        np.allclose(a, expected_1, rtol=0, atol=1e-5) or np.allclose(a, expected_2, rtol=0, atol=1e-5) for a in answers
    )


def test_the_gateways_raw_infer_matches_onnxruntime_and_maps_errors(served: Served) -> None:
    """TritonEncoders sends raw_input_contents and reads raw_output_contents: same answer as onnxruntime;
    an unknown model is UNAVAILABLE (DependencyUnavailable) naming the model, a spent deadline a timeout."""
    spec = SPECS[USER_ENCODER]
    arrays = sample_inputs(spec, batch=3, length=5, rng=np.random.default_rng(5))
    history, mask = arrays[contract.HISTORY], arrays[contract.HISTORY_MASK]
    tokenizers: Any = dict.fromkeys(contract.TEXT_FIELDS)  # only the user encoder is called

    async def run() -> None:
        encoders = TritonEncoders(TritonSettings(url=served.server.grpc_url, timeout_s=TIMEOUT_S), tokenizers)
        missing = TritonEncoders(TritonSettings(url=served.server.grpc_url, user_encoder="no-such-model"), tokenizers)
        try:
            got = await encoders.encode_users(history, mask)
            assert got.dtype == np.float32 and got.shape == (3, *spec.output.dims)
            np.testing.assert_allclose(got, run_onnx(served.onnx[USER_ENCODER], arrays), rtol=0, atol=1e-5)
            with pytest.raises(DependencyUnavailable, match="no-such-model"):
                await missing.encode_users(history, mask)
            with pytest.raises(DependencyTimeout):
                await encoders.encode_users(history, mask, timeout_s=1e-6)
        finally:
            await encoders.close()
            await missing.close()

    asyncio.run(run())
