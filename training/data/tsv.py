"""Line-level reading and writing shared by the MIND and MS MARCO loaders.

Files are read as bytes and decoded line by line, so a bad byte or a wrong column count is
reported with its 1-based line number, and a stray carriage return inside a field cannot split a
record (only `\\n` ends a line). Writers refuse fields that would break the format (tabs, line
breaks) instead of writing a file that no longer parses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from training.data.errors import DataFormatError

_FORBIDDEN_IN_FIELDS = ("\t", "\n", "\r")
_IDENTIFIER = re.compile(r"\S+")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its line ending)."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(path, number, f"not valid UTF-8 ({error.reason})") from None
            yield number, line.rstrip("\r\n")


def iter_tsv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for a headerless tab-separated file with exactly `columns`."""
    for number, line in iter_lines(path):
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise DataFormatError(
                path,
                number,
                f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), found {len(fields)}",
            )
        yield number, fields


def require_identifier(path: Path, line: int, column: str, value: str) -> str:
    """Return `value` if it is a usable id: non-empty and without whitespace."""
    if _IDENTIFIER.fullmatch(value) is None:
        raise DataFormatError(path, line, f"{column} {value!r} is empty or contains whitespace")
    return value


def check_identifier(what: str, value: str, forbidden: str = "") -> str:
    """Writers' twin of `require_identifier`: ValueError unless `value` is a non-empty id without
    whitespace or any of `forbidden`, so nothing is written that the loaders would reject."""
    if _IDENTIFIER.fullmatch(value) is None or any(char in value for char in forbidden):
        raise ValueError(f"{what} {value!r} is empty or contains whitespace or one of {forbidden!r}")
    return value


def parse_iso_time(path: Path, line: int, column: str, value: str) -> datetime:
    """Parse an ISO-8601 datetime or raise DataFormatError naming the column."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise DataFormatError(path, line, f"{column} {value!r} is not an ISO-8601 datetime") from None


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write headerless TSV rows (creating parent folders); return the row count.

    Raises ValueError naming the row and column if a field holds a tab or a line break.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for count, row in enumerate(rows, start=1):
            if len(row) != len(columns):
                raise ValueError(f"{path.name} row {count}: {len(row)} fields for columns {columns}")
            for column, value in zip(columns, row, strict=True):
                if any(char in value for char in _FORBIDDEN_IN_FIELDS):
                    raise ValueError(f"{path.name} row {count}: {column} contains a tab or line break: {value[:50]!r}")
            file.write("\t".join(row) + "\n")
    return count
