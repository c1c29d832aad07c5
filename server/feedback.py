"""Feedback events: what Recommend served, remembered in memory, and written durably as MIND data once
LogFeedback reports what the user did with it.

Why this shape:
- Recommend only remembers (`ImpressionTable`: a bounded, expiring in-memory table keyed by a random
  impression id): no disk I/O per answer, so the hot path stays cheap. Answers whose feedback never
  comes are forgotten (counted in `recstack_feedback_forgotten_total`).
- LogFeedback writes each impression as one line of MIND's behaviors.tsv
  (`impression_id \\t user_id \\t time \\t history \\t N1-1 N2-0 ...`) and the shown and history items
  it names, once each, to the same directory's news.tsv (`FeedbackLog`). One directory per UTC day of
  writing (`<log_dir>/YYYY-MM-DD/`), so every day is a MIND split folder that training's loader reads
  as it is (`training.data.mind.load_mind_split`), and `training.data.feedback` joins days into a
  train/dev split. Files are only appended to, and each call's lines are flushed and fsync'd (news
  first, so a behaviors line never names an item that is not durable) before the reply: what was
  acknowledged survives a crash. A line torn by a crash was never acknowledged; it is cut off when the
  file is next opened, so later lines stay parseable.
- Each impression is logged once, never as a duplicate line (which the MIND loader would reject): its
  entry leaves the table when its line is durable. A repeat with the same clicks is a retry whose
  acknowledgement was lost, and is acknowledged again, counted as the original was, with nothing
  written (idempotent; for as long as an answer is remembered, `impression_ttl_s`). A repeat with other
  clicks is INVALID_ARGUMENT; one while the original call is still writing is UNAVAILABLE (retry).
- Gateway workers (`gateway.workers` > 1) each remember their own answers and write their own log,
  `<log_dir>/worker-<i>/YYYY-MM-DD/` (no two processes append to one file); training reads every worker's
  days together. A LogFeedback must reach the worker that served the answer: send it on the channel
  (connection) the Recommend used. A connection stays on one worker, so a frontend that does this works.
- MIND's format cannot hold news ids containing `-` (its label separator): such ids are left out of
  the line (counted in `recstack_feedback_left_out_ids_total`); an impression left with no shown item
  is not written.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cachetools import TTLCache

from server.config import FeedbackSettings
from server.domain import FeedbackEvent, RecommendQuery
from server.errors import DependencyUnavailable, InvalidArgument
from server.observability import (
    FEEDBACK_CLICKS,
    FEEDBACK_FORGOTTEN,
    FEEDBACK_IMPRESSIONS,
    FEEDBACK_LEFT_OUT,
    FEEDBACK_SHOWN,
)
from server.pipeline.recommend import Recommendation

BEHAVIORS_FILE = "behaviors.tsv"  # the names training's MIND loader reads in a split folder
NEWS_FILE = "news.tsv"
NEWS_COLUMNS = 8  # news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
WORKER_FOLDER = "worker-"  # a gateway worker's own log: <log_dir>/worker-<i>/
ANONYMOUS_USER = "-"  # MIND's user column must not be empty
LABEL_SEPARATOR = "-"  # MIND writes a candidate as `<news id>-<label>`


@dataclass(frozen=True, slots=True, weakref_slot=True)
class NewsRow:
    """What the log's news.tsv says of an item (MIND's other columns stay empty)."""

    item_id: str
    title: str
    category: str


class SharedRows:
    """One `NewsRow` per item, shared by every remembered answer that names it, for as long as one does.

    Why: the same catalog items appear in many answers (shown, and in histories); a row object and an id
    string per mention made a remembered answer ~4.3 KB, so the impression table grew by ~60 MB in a
    10-minute soak; shared rows leave a pointer per mention: ~1.1 KB per answer (tracemalloc, k=10 + 50 history).

    A dict of weak references (an entry leaves when its row dies), not `weakref.WeakValueDictionary`: this runs
    for every item of every Recommend answer, where that class's Python-level `get` made it ~2.8 us per row,
    139 us per answer with a 50-item history, against 8 us this way (timeit).
    """

    def __init__(self) -> None:
        self._refs: dict[str, weakref.ref[NewsRow]] = {}

    def row(self, item_id: str, title: str, category: str) -> NewsRow:
        ref = self._refs.get(item_id)
        row = ref() if ref is not None else None
        if row is None or row.title != title or row.category != category:
            row = NewsRow(item_id, title, category)
            self._refs[item_id] = weakref.ref(row, functools.partial(self._forget, item_id))
        return row

    def __len__(self) -> int:
        return len(self._refs)

    def _forget(self, item_id: str, _dead: weakref.ref[NewsRow]) -> None:
        """The item's row is gone: drop its entry. (A row replaced by a newer one never calls this: its reference
        object went with the entry, and a dead reference object calls nothing.)"""
        self._refs.pop(item_id, None)


@dataclass(frozen=True, slots=True)
class ServedImpression:
    """One Recommend answer as remembered for its feedback."""

    user_id: str
    shown: tuple[NewsRow, ...]  # best first
    history: tuple[NewsRow, ...]  # the history the ranking used, oldest first
    served_at: int  # unix seconds
    model_version: str


@dataclass(frozen=True, slots=True)
class LoggedImpression:
    """One behaviors.tsv line to write, with the news rows it names."""

    impression_id: str
    user_id: str
    time: int  # unix seconds
    history: tuple[str, ...]
    shown: tuple[str, ...]
    clicked: frozenset[str]
    news: tuple[NewsRow, ...]

    def behaviors_line(self) -> str:
        labels = " ".join(f"{item_id}{LABEL_SEPARATOR}{int(item_id in self.clicked)}" for item_id in self.shown)
        return "\t".join((self.impression_id, self.user_id, mind_time(self.time), " ".join(self.history), labels))


def mind_time(unix_seconds: int) -> str:
    """MIND's `11/15/2019 8:55:22 AM`, in UTC."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return f"{moment.month}/{moment.day}/{moment.year} {moment.hour % 12 or 12}:{moment:%M:%S} {moment:%p}"


def tsv_field(text: str) -> str:
    """`text` with tabs, line breaks and other control characters as spaces, so it stays one TSV field."""
    return "".join(char if char.isprintable() else " " for char in text)


def news_line(row: NewsRow) -> str:
    fields = [row.item_id, tsv_field(row.category), "", tsv_field(row.title)]
    return "\t".join(fields + [""] * (NEWS_COLUMNS - len(fields)))


class ImpressionTable:
    """Served answers by impression id: at most `capacity`, each for `ttl_s`; oldest forgotten first.

    Entries are kept in insertion order, which is also expiry order, so adding is O(1) amortised.
    """

    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.ttl_s, self.clock = capacity, ttl_s, clock
        self._entries: OrderedDict[str, tuple[float, ServedImpression]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, impression: ServedImpression) -> str:
        """Remember `impression` under a new random id (32 hex digits), which is returned."""
        now = self.clock()
        self._forget_expired(now)
        if len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)
            FEEDBACK_FORGOTTEN.labels("capacity").inc()
        impression_id = uuid.uuid4().hex
        self._entries[impression_id] = (now + self.ttl_s, impression)
        return impression_id

    def get(self, impression_id: str) -> ServedImpression | None:
        entry = self._entries.get(impression_id)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def take(self, impression_ids: Iterable[str]) -> dict[str, ServedImpression]:
        """Remove and return these entries (each must be present)."""
        return {impression_id: self._entries.pop(impression_id)[1] for impression_id in impression_ids}

    def put_back(self, impressions: dict[str, ServedImpression]) -> None:
        """Remember taken entries again (their write failed), with a fresh time to live."""
        expires = self.clock() + self.ttl_s
        for impression_id, impression in impressions.items():
            self._entries[impression_id] = (expires, impression)

    def _forget_expired(self, now: float) -> None:
        while self._entries:
            impression_id, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                return
            del self._entries[impression_id]
            FEEDBACK_FORGOTTEN.labels("expired").inc()


def utc_today() -> date:
    return datetime.now(UTC).date()


class FeedbackLog:
    """Append-only MIND files under `directory`, one folder per UTC day (`today()` decides which).

    `append` blocks (it writes and fsyncs): call it off the event loop. It is thread-safe.
    """

    def __init__(
        self, directory: Path, today: Callable[[], date] = utc_today, fsync: Callable[[int], None] = os.fsync
    ) -> None:
        self.directory, self.today, self.fsync = Path(directory), today, fsync
        self._lock = threading.Lock()
        self._day: Path | None = None
        self._news_ids: set[str] = set()  # the ids in the current day's news.tsv

    def day_directory(self, day: date) -> Path:
        return self.directory / day.isoformat()

    def append(self, impressions: Sequence[LoggedImpression]) -> None:
        """Write the impressions' news rows (new ids only) then their lines; durable when this returns."""
        with self._lock:
            try:
                day = self._open(self.day_directory(self.today()))
                rows = {row.item_id: row for i in impressions for row in i.news if row.item_id not in self._news_ids}
                self._append(day / NEWS_FILE, [news_line(row) for row in rows.values()])
                self._news_ids.update(rows)
                self._append(day / BEHAVIORS_FILE, [i.behaviors_line() for i in impressions])
            except BaseException:
                self._day = None  # a failed write may have torn a line: repair it on the next call
                raise

    def _open(self, day: Path) -> Path:
        """Make `day` the current folder: create it, cut torn tails, learn which news it holds."""
        if day != self._day:
            self._create_directories(day)
            for name in (NEWS_FILE, BEHAVIORS_FILE):
                drop_torn_tail(day / name)
            news = day / NEWS_FILE
            lines = news.read_text(encoding="utf-8").split("\n") if news.exists() else []
            self._news_ids = {line.split("\t", 1)[0] for line in lines if line}
            self._day = day
        return day

    def _create_directories(self, directory: Path) -> None:
        """Create `directory` and its missing parents, each name made durable in its parent."""
        missing = [path for path in (directory, *directory.parents) if not path.exists()]
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            self._sync_directory(path.parent)

    def _append(self, path: Path, lines: Sequence[str]) -> None:
        if not lines:
            return
        created = not path.exists()
        with path.open("a", encoding="utf-8", newline="\n") as file:
            file.write("".join(line + "\n" for line in lines))
            file.flush()
            self.fsync(file.fileno())
        if created:  # the new file's name must be durable too
            self._sync_directory(path.parent)

    def _sync_directory(self, directory: Path) -> None:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            self.fsync(descriptor)
        finally:
            os.close(descriptor)


def drop_torn_tail(path: Path, chunk: int = 65_536) -> None:
    """Cut a last line without its newline (a write a crash interrupted, never acknowledged)."""
    if not path.exists():
        return
    with path.open("rb+") as file:
        end = file.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - chunk)
            file.seek(start)
            block = file.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep != end:
            file.truncate(keep)
            file.flush()
            os.fsync(file.fileno())


@dataclass(frozen=True, slots=True)
class LoggedOutcome:
    """What one logged event was, to answer its retries: the clicks it reported, and what was counted."""

    clicked: frozenset[str]
    impressions: int  # 1, or 0 when no shown item could be written
    clicks: int


class FeedbackRecorder:
    """Remembers Recommend answers and writes their feedback (see the module docstring)."""

    def __init__(
        self, table: ImpressionTable, log: FeedbackLog, max_events: int, clock: Callable[[], float] = time.time
    ) -> None:
        """`max_events`: the most events one LogFeedback call may carry."""
        self.table, self.log, self.max_events, self.clock = table, log, max_events, clock
        self.rows = SharedRows()
        # impressions logged, for as long as (and as many as) answers are remembered: retries are answered
        self.logged: TTLCache[str, LoggedOutcome] = TTLCache(table.capacity, table.ttl_s, timer=table.clock)
        self._writing: set[str] = set()  # impressions taken by a call that is still writing them

    @classmethod
    def from_settings(cls, settings: FeedbackSettings, worker: int | None = None) -> FeedbackRecorder:
        """`worker`: this process's index under a `server.workers` supervisor (it then writes its own log)."""
        table = ImpressionTable(settings.max_pending_impressions, settings.impression_ttl_s)
        log_dir = settings.log_dir if worker is None else settings.log_dir / f"{WORKER_FOLDER}{worker}"
        return cls(table, FeedbackLog(log_dir), settings.max_events)

    def remember(self, query: RecommendQuery, result: Recommendation, model_version: str) -> str:
        """The impression id of `result` ("" when nothing was shown: there is nothing to give feedback on)."""
        if not result.items:
            return ""
        served = ServedImpression(
            user_id=query.user_id or ANONYMOUS_USER,
            shown=tuple([self.rows.row(item.item_id, item.title, item.category) for item in result.items]),
            history=tuple(itertools.starmap(self.rows.row, result.history)),
            served_at=int(self.clock()),
            model_version=model_version,
        )
        return self.table.add(served)

    async def record(self, events: Sequence[FeedbackEvent]) -> tuple[int, int]:
        """Write the events' impressions durably; (impressions, clicks) written.

        InvalidArgument naming the field when an event does not match what was served; then nothing is written.
        """
        retried = self._check(events)
        fresh = [event for event in events if event.impression_id not in retried]
        served = self.table.take(event.impression_id for event in fresh)
        lines = {event.impression_id: logged_impression(event, served[event.impression_id]) for event in fresh}
        written = [line for line in lines.values() if line]
        self._writing.update(served)
        try:
            await asyncio.to_thread(self.log.append, written)
        except OSError as error:
            self.table.put_back(served)
            raise DependencyUnavailable("feedback_log", str(error)) from error
        finally:
            self._writing.difference_update(served)
        outcomes = list(retried.values())
        for event in fresh:
            line = lines[event.impression_id]
            outcome = LoggedOutcome(frozenset(event.clicked), int(line is not None), len(line.clicked) if line else 0)
            self.logged[event.impression_id] = outcome
            outcomes.append(outcome)
        for line in written:
            version = served[line.impression_id].model_version
            FEEDBACK_IMPRESSIONS.labels(version).inc()
            FEEDBACK_CLICKS.labels(version).inc(len(line.clicked))
            FEEDBACK_SHOWN.labels(version).inc(len(line.shown))
        return sum(o.impressions for o in outcomes), sum(o.clicks for o in outcomes)

    def _check(self, events: Sequence[FeedbackEvent]) -> dict[str, LoggedOutcome]:
        """Raise for an event that does not match what was served; the retries among them, by impression id."""
        retried: dict[str, LoggedOutcome] = {}
        seen: set[str] = set()
        for i, event in enumerate(events):
            field = f"events[{i}]"
            if event.impression_id in seen:
                raise InvalidArgument(f"{field}.impression_id", "the same impression twice in one call")
            seen.add(event.impression_id)
            served = self.table.get(event.impression_id)
            if served is None:
                retried[event.impression_id] = self._retry(event, field)
                continue
            shown = {row.item_id for row in served.shown}
            for j, item_id in enumerate(event.clicked):
                if item_id not in shown:
                    raise InvalidArgument(f"{field}.clicked_item_ids[{j}]", f"{item_id!r} was not shown")
        return retried

    def _retry(self, event: FeedbackEvent, field: str) -> LoggedOutcome:
        """The original outcome of an event logged before (a retry after a lost acknowledgement), or raise."""
        if event.impression_id in self._writing:
            raise DependencyUnavailable("feedback_log", f"{field}: another call is writing this impression; retry")
        outcome = self.logged.get(event.impression_id)
        if outcome is None:
            raise InvalidArgument(f"{field}.impression_id", "unknown or expired")
        if outcome.clicked != frozenset(event.clicked):
            raise InvalidArgument(f"{field}.clicked_item_ids", "this impression was already logged with other clicks")
        return outcome


def logged_impression(event: FeedbackEvent, served: ServedImpression) -> LoggedImpression | None:
    """The line to write for `event`, leaving out ids MIND cannot hold; None when no shown item is left."""
    shown = writable(served.shown)
    if not shown:
        return None
    history = writable(served.history)
    return LoggedImpression(
        impression_id=event.impression_id,
        user_id=served.user_id,
        time=event.shown_at if event.shown_at is not None else served.served_at,
        history=tuple(row.item_id for row in history),
        shown=tuple(row.item_id for row in shown),
        clicked=frozenset(event.clicked) & {row.item_id for row in shown},
        news=history + shown,
    )


def writable(rows: Sequence[NewsRow]) -> tuple[NewsRow, ...]:
    """The rows whose id MIND's format can hold; the others are counted."""
    kept = tuple(row for row in rows if LABEL_SEPARATOR not in row.item_id)
    FEEDBACK_LEFT_OUT.inc(len(rows) - len(kept))
    return kept
