"""Argument checks of the store's calls, each failure an InvalidArgument naming the argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract.schemas import ID, MAX_RESULT_ROWS
from server.errors import InvalidArgument
from server.milvus.expressions import string_literal


def check_rows(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Each row is a mapping with a valid string id; returns the last id (None when there are no rows)."""
    if isinstance(rows, str | Mapping) or not isinstance(rows, Sequence):
        raise InvalidArgument("rows", "must be a list of mappings")
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"rows[{n}]", f"must be a mapping, got {type(row).__name__}")
        string_literal(row.get(ID), f"rows[{n}].{ID}")
        if not row[ID]:
            raise InvalidArgument(f"rows[{n}].{ID}", "must not be empty")
    return str(rows[-1][ID]) if rows else None


def unique_ids(ids: Sequence[str]) -> list[str]:
    """`ids` without repeats, in order; each must be a string an expression can hold."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgument("ids", "must be a list of strings")
    for n, value in enumerate(ids):
        string_literal(value, f"ids[{n}]")
    return list(dict.fromkeys(ids))


def check_limit(value: object, argument: str, maximum: int = MAX_RESULT_ROWS) -> int:
    """An integer in [1, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgument(argument, f"must be an integer in [1, {maximum}], got {value!r}")
    return value


def query_vectors(vectors: NDArray[np.float32], dim: int) -> NDArray[np.float32]:
    """`vectors` as finite float32 [nq >= 1, dim]."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise InvalidArgument("vectors", f"must have shape [nq >= 1, {dim}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidArgument("vectors", "must be finite")
    return array


def check_fields(names: Sequence[str], known: frozenset[str], collection: str, argument: str) -> None:
    """Every name in `names` is a field of the collection."""
    if isinstance(names, str):
        raise InvalidArgument(argument, "must be a list of field names")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidArgument(argument, f"collection '{collection}' has no field {', '.join(map(repr, unknown))}")
