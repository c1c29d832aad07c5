"""Read and write MS MARCO passage-ranking files, plus a `passage_meta.tsv` sidecar.

collection.tsv       `pid \\t passage`            (8.8M lines for real: use `iter_collection` to stream)
queries.*.tsv        `qid \\t query text`
qrels.*.tsv          TREC `qid 0 pid grade`, tab- or space-separated as MS MARCO ships it; the
                     second column (TREC's iteration) is ignored, written as `0`.
triples              `query \\t positive passage \\t negative passage` (triples.train.small.tsv) or
                     `qid \\t positive pid \\t negative pid` (qidpidtriples.train.full.tsv). `load_triples`
                     detects which from the first line: ids when none of its three fields contains
                     whitespace (a passage always does), text otherwise; every later line must agree.
passage_meta.tsv     NOT an MS MARCO file:
                     `pid \\t doc_id \\t title \\t category \\t published (ISO-8601 or empty)`.

Ids are strings (MS MARCO uses integers, the offline set `P12_0` / `Q12`) and must not contain
whitespace. Malformed lines and duplicate ids raise `DataFormatError` naming file and line.
`load_retrieval_split` checks that judged queries exist: with `strict=False` judgements of unknown
queries are skipped, counted and logged instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Literal

from training.data.errors import DataFormatError
from training.data.tsv import (
    check_identifier,
    iter_lines,
    iter_tsv,
    parse_iso_time,
    require_identifier,
    write_tsv,
)
from training.data.types import PassageMeta, RetrievalSplit

logger = logging.getLogger(__name__)

COLLECTION_COLUMNS = ("pid", "passage")
QUERY_COLUMNS = ("qid", "query")
QRELS_COLUMNS = ("qid", "iteration", "pid", "grade")
TEXT_TRIPLE_COLUMNS = ("query", "positive", "negative")
ID_TRIPLE_COLUMNS = ("qid", "positive_pid", "negative_pid")
PASSAGE_META_COLUMNS = ("pid", "doc_id", "title", "category", "published")


@dataclass(frozen=True, slots=True)
class TextTriple:
    """One line of triples.train.small.tsv."""

    query: str
    positive: str
    negative: str


@dataclass(frozen=True, slots=True)
class IdTriple:
    """One line of qidpidtriples.train.full.tsv."""

    qid: str
    positive_pid: str
    negative_pid: str


def iter_collection(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream (pid, passage) pairs; duplicate pids raise."""
    yield from _iter_id_text(Path(path), COLLECTION_COLUMNS)


def load_collection(path: str | Path) -> dict[str, str]:
    """Read collection.tsv into {pid: passage}."""
    return dict(iter_collection(path))


def load_queries(path: str | Path) -> dict[str, str]:
    """Read a queries file into {qid: text}."""
    return dict(_iter_id_text(Path(path), QUERY_COLUMNS))


def _iter_id_text(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for line, (identifier, text) in iter_tsv(path, columns):
        require_identifier(path, line, columns[0], identifier)
        if identifier in seen:
            raise DataFormatError(path, line, f"duplicate {columns[0]} {identifier!r}")
        seen.add(identifier)
        yield identifier, text


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read TREC qrels (`qid 0 pid grade`, any whitespace) into {qid: {pid: grade}}."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for line, text in iter_lines(path):
        fields = text.split()
        if len(fields) != len(QRELS_COLUMNS):
            raise DataFormatError(
                path, line, f"expected 4 whitespace-separated columns (qid 0 pid grade), found {len(fields)}"
            )
        qid, _, pid, grade_text = fields
        try:
            grade = int(grade_text)
        except ValueError:
            raise DataFormatError(path, line, f"grade {grade_text!r} is not an integer") from None
        judged = qrels.setdefault(qid, {})
        if pid in judged:
            raise DataFormatError(path, line, f"duplicate judgement for qid {qid!r}, pid {pid!r}")
        judged[pid] = grade
    return qrels


def load_retrieval_split(queries_path: str | Path, qrels_path: str | Path, *, strict: bool = True) -> RetrievalSplit:
    """Queries with their judgements; qrels naming an unknown qid raise (or are skipped if not strict)."""
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    unknown = sorted(set(qrels) - set(queries))
    if unknown and strict:
        raise DataFormatError(qrels_path, None, f"qids not in {Path(queries_path).name}: {unknown[:3]}")
    if unknown:
        logger.warning("%s: skipped judgements of %d unknown qids", qrels_path, len(unknown))
    return RetrievalSplit(queries=queries, qrels={qid: qrels[qid] for qid in qrels if qid in queries})


def load_triples(
    path: str | Path, kind: Literal["auto", "text", "ids"] = "auto"
) -> Iterator[TextTriple] | Iterator[IdTriple]:
    """Stream training triples, text or id form (`auto` detects it from the first line)."""
    path = Path(path)
    if kind == "auto":
        kind = _detect_triple_kind(path)
    return _iter_triples(path, kind)


def _detect_triple_kind(path: Path) -> Literal["text", "ids"]:
    for _, fields in iter_tsv(path, TEXT_TRIPLE_COLUMNS):
        return "ids" if not any(_has_whitespace(field) for field in fields) else "text"
    return "text"


def _iter_triples(path: Path, kind: Literal["text", "ids"]) -> Iterator[TextTriple] | Iterator[IdTriple]:
    columns = ID_TRIPLE_COLUMNS if kind == "ids" else TEXT_TRIPLE_COLUMNS
    for line, fields in iter_tsv(path, columns):
        if kind == "ids":
            for column, value in zip(columns, fields, strict=True):
                require_identifier(path, line, column, value)
            yield IdTriple(*fields)
        else:
            if not all(fields):
                raise DataFormatError(path, line, "empty query or passage in a text triple")
            yield TextTriple(*fields)


def _has_whitespace(text: str) -> bool:
    return any(char.isspace() for char in text)


def load_passage_meta(path: str | Path) -> dict[str, PassageMeta]:
    """Read the passage_meta.tsv sidecar into {pid: PassageMeta}."""
    path = Path(path)
    meta: dict[str, PassageMeta] = {}
    for line, (pid, doc_id, title, category, published) in iter_tsv(path, PASSAGE_META_COLUMNS):
        require_identifier(path, line, "pid", pid)
        if pid in meta:
            raise DataFormatError(path, line, f"duplicate pid {pid!r}")
        meta[pid] = PassageMeta(
            doc_id=require_identifier(path, line, "doc_id", doc_id),
            title=title,
            category=category,
            published=parse_iso_time(path, line, "published", published) if published else None,
        )
    return meta


def write_collection(path: str | Path, passages: Mapping[str, str]) -> int:
    """Write collection.tsv; returns the row count."""
    rows = ((check_identifier("pid", pid), text) for pid, text in passages.items())
    return write_tsv(Path(path), COLLECTION_COLUMNS, rows)


def write_queries(path: str | Path, queries: Mapping[str, str]) -> int:
    """Write a queries file; returns the row count."""
    rows = ((check_identifier("qid", qid), text) for qid, text in queries.items())
    return write_tsv(Path(path), QUERY_COLUMNS, rows)


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> int:
    """Write TREC qrels tab-separated, as MS MARCO ships them (`qid \\t 0 \\t pid \\t grade`)."""
    rows = (
        [check_identifier("qid", qid), "0", check_identifier("pid", pid), str(grade)]
        for qid, judged in qrels.items()
        for pid, grade in judged.items()
    )
    return write_tsv(Path(path), QRELS_COLUMNS, rows)


def write_triples(path: str | Path, triples: Iterable[TextTriple | IdTriple]) -> int:
    """Write text or id triples; a file holds one kind only (ValueError otherwise)."""
    return write_tsv(Path(path), TEXT_TRIPLE_COLUMNS, _triple_rows(triples))


def _triple_rows(triples: Iterable[TextTriple | IdTriple]) -> Iterator[list[str]]:
    first_kind: type | None = None
    for triple in triples:
        first_kind = first_kind or type(triple)
        if type(triple) is not first_kind:
            raise ValueError("a triples file holds text triples or id triples, not both")
        fields = list(astuple(triple))
        if isinstance(triple, IdTriple):
            for column, value in zip(ID_TRIPLE_COLUMNS, fields, strict=True):
                check_identifier(column, value)
        yield fields


def write_passage_meta(path: str | Path, meta: Mapping[str, PassageMeta]) -> int:
    """Write the passage_meta.tsv sidecar."""
    rows = (
        [
            check_identifier("pid", pid),
            check_identifier("doc_id", item.doc_id),
            item.title,
            item.category,
            item.published.isoformat() if item.published else "",
        ]
        for pid, item in meta.items()
    )
    return write_tsv(Path(path), PASSAGE_META_COLUMNS, rows)
