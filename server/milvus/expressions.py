"""Milvus boolean expressions built from validated values; strings are quoted and escaped here, never
interpolated raw (pymilvus's own id quoting does not escape, so ids go through here too)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from contract.schemas import ID
from server.domain import Filters
from server.errors import InvalidArgument

EVERY_ROW = f'{ID} != ""'


def filter_expression(filters: Filters) -> str:
    """The expression for `filters` ('' for no restriction); InvalidArgument names a bad field."""
    clauses = []
    categories = filters.categories
    if isinstance(categories, str) or not isinstance(categories, Sequence):
        raise InvalidArgument("filters.categories", "must be a list of strings")
    if categories:
        literals = [string_literal(c, f"filters.categories[{i}]") for i, c in enumerate(categories)]
        clauses.append(f"category in [{', '.join(literals)}]")
    after = filters.published_after
    if after is not None:
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
            raise InvalidArgument("filters.published_after", f"must be unix seconds >= 0, got {after!r}")
        clauses.append(f"published > {after}")
    return " and ".join(clauses)


def ids_expression(ids: Sequence[str]) -> str:
    """Rows whose id is one of `ids`."""
    return f"{ID} in [{', '.join(string_literal(i, f'ids[{n}]') for n, i in enumerate(ids))}]"


def after_id_expression(last_id: str | None) -> str:
    """Rows whose id sorts after `last_id` (every row for None): the cursor of a paged read."""
    return EVERY_ROW if last_id is None else f"{ID} > {string_literal(last_id, ID)}"


def string_literal(value: object, field_name: str) -> str:
    """`value` as a double-quoted Milvus string literal.

    Backslash and double quote are escaped (Milvus Lite's and the server's parsers both read `\\\\` and
    `\\"`); control characters, which the two parsers treat differently, and unpaired surrogates (not
    encodable) are rejected.
    """
    if not isinstance(value, str):
        raise InvalidArgument(field_name, f"must be a string, got {type(value).__name__}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidArgument(field_name, "must not contain control characters or unpaired surrogates")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
