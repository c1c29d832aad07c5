"""The one error the data loaders raise for a malformed input file.

Every message starts with `FILE:LINE:` (1-based line number) and then says what is wrong, so a
user holding a broken 2 GB behaviors.tsv can jump straight to the offending line.
"""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file does not follow its format; `path` and `line` (1-based, or None) locate it."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        location = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{location}: {problem}")
        self.path = Path(path)
        self.line = line
        self.problem = problem
