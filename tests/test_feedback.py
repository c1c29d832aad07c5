"""Feedback events: the in-memory impression table, the durable MIND log writer, LogFeedback's validation, the
log loading with training's MIND loader, and acknowledged events surviving a SIGKILL of the gateway."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import grpc
import pytest
from conftest import tiny_nrms_run
from feedback_fixtures import serving
from gateway_fixtures import gateway, sample
from google.protobuf.timestamp_pb2 import Timestamp

from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc
from server.config import FeedbackSettings, GatewaySettings
from server.domain import FeedbackEvent, RecommendQuery
from server.errors import DependencyUnavailable, InvalidArgument
from server.feedback import (
    BEHAVIORS_FILE,
    NEWS_FILE,
    FeedbackLog,
    FeedbackRecorder,
    ImpressionTable,
    LoggedImpression,
    NewsRow,
    ServedImpression,
    mind_time,
)
from server.pipeline.common import Item
from server.pipeline.recommend import Recommendation
from server.requests import RequestValidator
from training.data.build import DatasetPaths
from training.data.feedback import load_feedback_log, split_feedback_log, write_feedback_dataset
from training.data.mind import load_mind_split
from training.train_nrms import load_mind, train_nrms

ROOT = Path(__file__).resolve().parents[1]
DAY = date(2026, 11, 30)
NOON = int(datetime(2026, 11, 30, 12, 5, 9, tzinfo=UTC).timestamp())


def impression(impression_id: str, shown: tuple[str, ...], clicked: tuple[str, ...] = (), user: str = "U1"):
    rows = tuple(NewsRow(item_id, f"title of {item_id}", "news") for item_id in ("H1", *shown))
    return LoggedImpression(impression_id, user, NOON, ("H1",), shown, frozenset(clicked), rows)


class RecordingFsync:
    """os.fsync that also records, per file, the file's size when it was synced."""

    def __init__(self) -> None:
        self.synced: dict[str, int] = {}

    def __call__(self, descriptor: int) -> None:
        os.fsync(descriptor)
        self.synced[os.readlink(f"/proc/self/fd/{descriptor}")] = os.fstat(descriptor).st_size


def test_mind_time_is_minds_format_in_utc() -> None:
    assert mind_time(NOON) == "11/30/2026 12:05:09 PM"
    assert mind_time(NOON - 12 * 3600) == "11/30/2026 12:05:09 AM"


def test_the_log_writes_minds_lines_and_syncs_each_file_before_returning(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    log = FeedbackLog(tmp_path / "log", today=lambda: DAY, fsync=fsync)
    log.append([impression("i1", ("N1", "N2"), clicked=("N2",)), impression("i2", ("N2", "N3"))])
    day = tmp_path / "log" / "2026-11-30"
    assert (day / BEHAVIORS_FILE).read_text().splitlines() == [
        "i1\tU1\t11/30/2026 12:05:09 PM\tH1\tN1-0 N2-1",
        "i2\tU1\t11/30/2026 12:05:09 PM\tH1\tN2-0 N3-0",
    ]
    assert [line.split("\t")[0] for line in (day / NEWS_FILE).read_text().splitlines()] == ["H1", "N1", "N2", "N3"]
    for name in (BEHAVIORS_FILE, NEWS_FILE):  # synced with all of its content
        assert fsync.synced[str(day / name)] == (day / name).stat().st_size
    assert {str(tmp_path), str(tmp_path / "log"), str(day)} <= set(fsync.synced)  # new names are durable too


def test_the_log_rotates_by_utc_day_and_writes_each_news_id_once_per_day(tmp_path: Path) -> None:
    today = [DAY]
    log = FeedbackLog(tmp_path, today=lambda: today[0])
    log.append([impression("i1", ("N1",))])
    log.append([impression("i2", ("N1", "N2"))])
    today[0] = date(2026, 12, 1)
    log.append([impression("i3", ("N1",))])
    first, second = load_mind_split(tmp_path / "2026-11-30"), load_mind_split(tmp_path / "2026-12-01")
    assert [imp.impression_id for imp in first.impressions] == ["i1", "i2"]
    assert sorted(first.news) == ["H1", "N1", "N2"]  # the loader rejects a repeated news id
    assert [imp.impression_id for imp in second.impressions] == ["i3"]
    assert sorted(second.news) == ["H1", "N1"]
    # a restarted gateway learns the day's news from the file instead of repeating it
    FeedbackLog(tmp_path, today=lambda: today[0]).append([impression("i4", ("N1", "N3"))])
    assert sorted(load_mind_split(tmp_path / "2026-12-01").news) == ["H1", "N1", "N3"]


def test_a_line_torn_by_a_crash_is_cut_when_the_log_is_reopened(tmp_path: Path) -> None:
    FeedbackLog(tmp_path, today=lambda: DAY).append([impression("i1", ("N1",))])
    behaviors = tmp_path / "2026-11-30" / BEHAVIORS_FILE
    with behaviors.open("a") as file:
        file.write("i2\tU1\t11/30/20")  # never acknowledged: the process died mid-write
    FeedbackLog(tmp_path, today=lambda: DAY).append([impression("i3", ("N1",))])
    assert [imp.impression_id for imp in load_mind_split(behaviors.parent).impressions] == ["i1", "i3"]


def test_the_written_log_loads_with_the_mind_loader_with_labels_history_and_titles(tmp_path: Path) -> None:
    row = LoggedImpression(
        "i1",
        "U1",
        NOON,
        ("H1",),
        ("N1", "N2"),
        frozenset({"N1"}),
        (NewsRow("H1", "a\ttabbed\ntitle", "sports"), NewsRow("N1", "one", "news"), NewsRow("N2", "two", "")),
    )
    FeedbackLog(tmp_path, today=lambda: DAY).append([row])
    split = load_mind_split(tmp_path / "2026-11-30")
    (loaded,) = split.impressions
    assert (loaded.user_id, loaded.history, loaded.candidates, loaded.labels) == ("U1", ("H1",), ("N1", "N2"), (1, 0))
    assert loaded.time == datetime(2026, 11, 30, 12, 5, 9)
    assert (split.news["H1"].title, split.news["H1"].category) == ("a tabbed title", "sports")


def test_the_table_forgets_the_oldest_beyond_capacity_and_after_the_ttl() -> None:
    now = [0.0]
    table = ImpressionTable(capacity=2, ttl_s=10, clock=lambda: now[0])
    served = ServedImpression("U1", (NewsRow("N1", "t", "c"),), (), 0, "1")
    capacity_before, expired_before = (
        sample("recstack_feedback_forgotten_total", reason=reason) for reason in ("capacity", "expired")
    )
    first, second = table.add(served), table.add(served)
    third = table.add(served)
    assert (table.get(first), table.get(second), table.get(third)) == (None, served, served)
    assert sample("recstack_feedback_forgotten_total", reason="capacity") == capacity_before + 1
    now[0] = 10.0
    assert table.get(second) is None  # expired
    table.add(served)
    assert len(table) == 1
    assert sample("recstack_feedback_forgotten_total", reason="expired") == expired_before + 2
    assert len({first, second, third}) == 3 and all(len(i) == 32 for i in (first, second, third))


def recorder(tmp_path: Path) -> FeedbackRecorder:
    return FeedbackRecorder.from_settings(FeedbackSettings(log_dir=tmp_path))


def served(rec: FeedbackRecorder, *shown: str, history: tuple[str, ...] = ("H1",)) -> str:
    query = RecommendQuery("U1", (), len(shown), None, True, 0.0)  # type: ignore[arg-type]
    result = Recommendation(
        [Item(i, 1.0, f"title {i}", "news") for i in shown], False, len(history), [(h, "", "") for h in history]
    )
    return rec.remember(query, result, "7")


def test_remembered_answers_share_one_row_per_item_until_its_description_changes(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    first = rec.table.get(served(rec, "N1", "N2"))
    again = rec.table.get(served(rec, "N2", "N1"))
    untitled = rec.table.get(served(rec, "N3", history=("N1",)))
    assert first is not None and again is not None and untitled is not None
    assert again.shown[1] is first.shown[0] and again.shown[0] is first.shown[1]  # a pointer per mention
    assert again.history[0] is first.history[0]
    assert untitled.history[0] is not first.shown[0]  # N1 named without its title: a row of its own
    assert (untitled.history[0].title, first.shown[0].title) == ("", "title N1")


def test_a_shared_row_is_dropped_once_no_remembered_answer_names_it(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    kept = served(rec, "N1")
    gone = served(rec, "N2", history=("N3",))
    assert len(rec.rows) == 4  # N1 and its history's H1, N2 and its history's N3
    rec.table.take([gone])
    gc.collect()
    assert len(rec.rows) == 2 and rec.table.get(kept) is not None  # N2 and N3 went with their answer
    newer = rec.rows.row("N1", "new title N1", "news")  # a new description replaces N1's row
    rec.table.take([kept])
    gc.collect()  # the old N1 row and H1 die with their answer, the newer N1 stays
    assert len(rec.rows) == 1 and rec.rows.row("N1", "new title N1", "news") is newer


@pytest.mark.anyio
async def test_events_that_do_not_match_what_was_served_are_rejected_naming_the_field(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    first, second = served(rec, "N1", "N2"), served(rec, "N3")
    cases = [
        ("events[1].impression_id", [FeedbackEvent(first, (), None), FeedbackEvent("nope", (), None)]),
        ("events[0].clicked_item_ids[1]", [FeedbackEvent(first, ("N1", "N3"), None)]),
        ("events[1].impression_id", [FeedbackEvent(second, (), None), FeedbackEvent(second, (), None)]),
    ]
    for field, events in cases:
        with pytest.raises(InvalidArgument) as error:
            await rec.record(events)
        assert error.value.field == field
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing of a rejected call is written
    assert await rec.record([FeedbackEvent(first, ("N2",), None)]) == (1, 1)
    with pytest.raises(InvalidArgument, match=r"^events\[0\]\.clicked_item_ids: this impression was already logged"):
        await rec.record([FeedbackEvent(first, ("N1",), None)])  # other clicks than the logged ones


@pytest.mark.anyio
async def test_a_retry_after_a_lost_acknowledgement_is_answered_as_the_original_and_writes_nothing(
    tmp_path: Path,
) -> None:
    rec = recorder(tmp_path)
    first, second = served(rec, "N1", "N2"), served(rec, "N3")
    assert await rec.record([FeedbackEvent(first, ("N2",), NOON)]) == (1, 1)
    impressions = sample("recstack_feedback_impressions_total", version="7")
    # the retry, in a call with a new event: the same answer for the retry, the new one written
    assert await rec.record([FeedbackEvent(first, ("N2",), NOON), FeedbackEvent(second, (), None)]) == (2, 1)
    assert [i.impression_id for i in load_feedback_log(tmp_path).impressions] == [first, second]  # one line each
    assert sample("recstack_feedback_impressions_total", version="7") == impressions + 1  # the retry not counted


@pytest.mark.anyio
async def test_a_retry_while_the_original_is_being_written_is_unavailable(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    impression_id = served(rec, "N1")
    writing, release = threading.Event(), threading.Event()
    append = rec.log.append

    def slow_append(impressions: Sequence[LoggedImpression]) -> None:
        writing.set()
        release.wait(10)
        append(impressions)

    rec.log.append = slow_append  # type: ignore[method-assign]
    original = asyncio.create_task(rec.record([FeedbackEvent(impression_id, ("N1",), None)]))
    await asyncio.to_thread(writing.wait, 10)
    with pytest.raises(DependencyUnavailable, match="another call is writing this impression"):
        await rec.record([FeedbackEvent(impression_id, ("N1",), None)])
    release.set()
    assert await original == (1, 1)
    assert await rec.record([FeedbackEvent(impression_id, ("N1",), None)]) == (1, 1)  # now an ordinary retry


@pytest.mark.anyio
async def test_recorded_feedback_counts_by_version_and_uses_the_clients_time(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    impressions, clicks, shown = (
        sample(f"recstack_feedback_{m}_total", version="7") for m in ("impressions", "clicks", "shown")
    )
    impression_id = served(rec, "N1", "N2", "N3")
    assert await rec.record([FeedbackEvent(impression_id, ("N1", "N2"), NOON)]) == (1, 2)
    assert sample("recstack_feedback_impressions_total", version="7") == impressions + 1
    assert sample("recstack_feedback_clicks_total", version="7") == clicks + 2
    assert sample("recstack_feedback_shown_total", version="7") == shown + 3
    (logged,) = load_feedback_log(tmp_path).impressions
    assert (logged.impression_id, logged.time, logged.labels) == (
        impression_id,
        datetime(2026, 11, 30, 12, 5, 9),
        (1, 1, 0),
    )


@pytest.mark.anyio
async def test_ids_minds_format_cannot_hold_are_left_out_and_counted(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    left_out = sample("recstack_feedback_left_out_ids_total")
    impression_id = served(rec, "N-1", "N2", history=("H-1", "H2"))
    assert await rec.record([FeedbackEvent(impression_id, ("N-1",), None)]) == (1, 0)
    (logged,) = load_feedback_log(tmp_path).impressions
    assert (logged.history, logged.candidates, logged.labels) == (("H2",), ("N2",), (0,))
    assert sample("recstack_feedback_left_out_ids_total") == left_out + 2
    only_unwritable = served(rec, "N-1")
    assert await rec.record([FeedbackEvent(only_unwritable, (), None)]) == (0, 0)


def test_the_request_validator_checks_the_events_shape() -> None:
    validator = RequestValidator(GatewaySettings())
    event = pb.FeedbackEvent
    cases = {
        "events": pb.LogFeedbackRequest(events=[event(impression_id="x")] * 3),
        "events[0].impression_id": pb.LogFeedbackRequest(events=[event(impression_id="x" * 65)]),
        "events[0].clicked_item_ids[1]": pb.LogFeedbackRequest(
            events=[event(impression_id="x", clicked_item_ids=["N1", "N1"])]
        ),
        "events[1].shown_at": pb.LogFeedbackRequest(
            events=[event(impression_id="x"), event(impression_id="y", shown_at=Timestamp(seconds=-5))]
        ),
    }
    for field, request in cases.items():
        with pytest.raises(InvalidArgument) as error:
            validator.feedback(request, max_events=2)
        assert error.value.field == field
    with pytest.raises(InvalidArgument, match=r"^events: need 1 to 2 events"):
        validator.feedback(pb.LogFeedbackRequest(), max_events=2)


def write_log(tmp_path: Path, count: int) -> Path:
    log = FeedbackLog(tmp_path / "log", today=lambda: DAY)
    for i in range(count):
        log.append([impression(f"i{i}", ("N1", "N2"), clicked=("N1",))])
    return tmp_path / "log"


def test_a_log_directory_is_a_train_dev_split_for_nrms_training(tmp_path: Path) -> None:
    log_dir = write_log(tmp_path, 10)
    train, dev = load_mind(log_dir)  # what `python -m training train --nrms data_dir=<log dir>` reads
    assert [i.impression_id for i in train.impressions] == [f"i{i}" for i in range(8)]
    assert [i.impression_id for i in dev.impressions] == ["i8", "i9"]
    out = write_feedback_dataset(log_dir, tmp_path / "mind")
    assert [len(load_mind_split(out / name).impressions) for name in ("train", "dev")] == [8, 2]
    with pytest.raises(ValueError, match="at least 2 impressions"):
        split_feedback_log(write_log(tmp_path / "small", 1))


@pytest.mark.anyio
async def test_each_gateway_worker_writes_its_own_log_and_training_reads_them_all(tmp_path: Path) -> None:
    workers = [FeedbackRecorder.from_settings(FeedbackSettings(log_dir=tmp_path), worker=i) for i in (0, 1)]
    logged = [served(rec, "N1", "N2") for rec in workers]
    for rec, impression_id in zip(workers, logged, strict=True):
        assert await rec.record([FeedbackEvent(impression_id, ("N2",), NOON)]) == (1, 1)
    assert sorted(p.parent.parent.name for p in tmp_path.glob("*/*/behaviors.tsv")) == ["worker-0", "worker-1"]
    assert sorted(i.impression_id for i in load_feedback_log(tmp_path).impressions) == sorted(logged)


@pytest.mark.anyio
async def test_recommend_then_log_feedback_writes_the_line(tmp_path: Path) -> None:
    async with serving(tmp_path) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        answer = await stub.Recommend(pb.RecommendRequest(user_id="U9", history=[pb.HistoryItem(id="a")], k=2))
        shown = [item.id for item in answer.items]
        event = pb.FeedbackEvent(impression_id=answer.impression_id, clicked_item_ids=[shown[1]])
        logged = await stub.LogFeedback(pb.LogFeedbackRequest(events=[event]))
        assert (logged.impressions_logged, logged.clicks_logged) == (1, 1)
        assert await stub.LogFeedback(pb.LogFeedbackRequest(events=[event])) == logged  # a retry: the same answer
        other = pb.FeedbackEvent(impression_id=answer.impression_id, clicked_item_ids=[shown[0]])
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.LogFeedback(pb.LogFeedbackRequest(events=[other]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("events[0].clicked_item_ids: this impression was already logged")
        unknown = pb.FeedbackEvent(impression_id="0" * 32)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.LogFeedback(pb.LogFeedbackRequest(events=[unknown]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details() == "events[0].impression_id: unknown or expired"
    split = load_feedback_log(tmp_path)
    (line,) = split.impressions
    assert (line.impression_id, line.user_id, line.history) == (answer.impression_id, "U9", ("a",))
    assert (line.candidates, line.labels) == (tuple(shown), (0, 1))
    assert split.news["b"].title == "Cup final tonight"


def start_gateway(log_dir: Path) -> tuple[subprocess.Popen[str], int]:
    paths = [str(ROOT), str(ROOT / "proto"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "feedback_fixtures.py"), str(log_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    assert first_line.startswith("port "), first_line
    return process, int(first_line.split()[1])


async def recommend_and_log(stub: gateway_pb2_grpc.GatewayStub, user: int, acknowledged: list[str]) -> None:
    """Recommend, then log a click on the first item; the impression id joins `acknowledged` once LogFeedback
    is acknowledged."""
    answer = await stub.Recommend(pb.RecommendRequest(user_id=f"U{user}", history=[pb.HistoryItem(id="a")], k=2))
    event = pb.FeedbackEvent(impression_id=answer.impression_id, clicked_item_ids=[answer.items[0].id])
    await stub.LogFeedback(pb.LogFeedbackRequest(events=[event]))
    acknowledged.append(answer.impression_id)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_every_acknowledged_event_survives_a_sigkill_of_the_gateway(tmp_path: Path) -> None:
    process, port = start_gateway(tmp_path)
    acknowledged: list[str] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            calls = [asyncio.ensure_future(recommend_and_log(stub, user, acknowledged)) for user in range(200)]
            while len(acknowledged) < 50:
                await asyncio.sleep(0.001)
            process.send_signal(signal.SIGKILL)  # right after an acknowledgement, with later calls in flight
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        process.kill()
        process.wait()
    assert any(isinstance(outcome, grpc.aio.AioRpcError) for outcome in outcomes)  # the kill cut calls short
    logged = load_feedback_log(tmp_path).impressions  # loads: no torn or repeated line reached the reader
    assert set(acknowledged) <= {imp.impression_id for imp in logged}
    assert all(imp.labels == (1, 0) for imp in logged)


@pytest.mark.slow
def test_nrms_trains_on_a_feedback_log(tiny_data: DatasetPaths, tmp_path: Path) -> None:
    """The tiny MIND set's train impressions, replayed through the log writer, train NRMS as data_dir."""
    split = load_mind_split(tiny_data.mind / "train")
    log = FeedbackLog(tmp_path, today=lambda: DAY)
    for imp in split.impressions:
        clicked = frozenset(c for c, label in zip(imp.candidates, imp.labels or (), strict=True) if label)
        ids = (*imp.history, *imp.candidates)
        rows = tuple(NewsRow(i, split.news[i].title, split.news[i].category) for i in ids)
        when = int(imp.time.replace(tzinfo=UTC).timestamp())
        log.append([LoggedImpression(imp.impression_id, imp.user_id, when, imp.history, imp.candidates, clicked, rows)])
    checkpoint = train_nrms(tiny_nrms_run(tiny_data, f"data_dir={tmp_path}", "train.epochs=1"))
    assert 0.0 < checkpoint.best_metrics["auc"] <= 1.0


@pytest.mark.anyio
async def test_log_feedback_enforces_the_events_setting_and_needs_a_feedback_log(tmp_path: Path) -> None:
    two_events = pb.LogFeedbackRequest(events=[pb.FeedbackEvent(impression_id=i) for i in ("x", "y")])
    async with serving(tmp_path, max_events=1) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await gateway_pb2_grpc.GatewayStub(channel).LogFeedback(two_events)
        assert (error.value.code(), error.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "events: need 1 to 1 events per call, got 2",
        )
    async with gateway() as without_log:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await without_log.stub.LogFeedback(two_events)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
