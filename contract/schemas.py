"""The Milvus collections' fields as plain data: names, types (as plain names), VARCHAR byte limits.

Shared by the gateway (`server.milvus.schema` builds pymilvus schemas from these), the benchmarks'
synthetic catalogs and the tests. Every collection also has the primary key `ID` (VARCHAR of at most
`ID_MAX_BYTES`) and `VECTOR` (FLOAT_VECTOR of the encoder's dimension).

VARCHAR limits count UTF-8 bytes, 4 per character at worst, so a 2000-character title or abstract
and an 8000-character passage (the gateway's request limits) always fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ID = "id"
VECTOR = "vector"
ID_MAX_BYTES = 64
TITLE_MAX_BYTES = 8192
TEXT_MAX_BYTES = 32768
CATEGORY_MAX_BYTES = 128
MAX_RESULT_ROWS = 16384  # Milvus's largest topK, also the most rows one query returns

ScalarType = Literal["VARCHAR", "INT64", "FLOAT"]


@dataclass(frozen=True)
class ScalarField:
    """One non-key, non-vector field; `max_bytes` is set for VARCHAR fields only."""

    name: str
    type: ScalarType
    max_bytes: int | None = None


NEWS_FIELDS = (
    ScalarField("title", "VARCHAR", TITLE_MAX_BYTES),
    ScalarField("abstract", "VARCHAR", TITLE_MAX_BYTES),
    ScalarField("category", "VARCHAR", CATEGORY_MAX_BYTES),
    ScalarField("subcategory", "VARCHAR", CATEGORY_MAX_BYTES),
    ScalarField("published", "INT64"),  # unix seconds, 0 = unknown
    ScalarField("popularity", "FLOAT"),
)
PASSAGE_FIELDS = (
    ScalarField("text", "VARCHAR", TEXT_MAX_BYTES),
    ScalarField("title", "VARCHAR", TITLE_MAX_BYTES),
    ScalarField("category", "VARCHAR", CATEGORY_MAX_BYTES),
    ScalarField("doc_id", "VARCHAR", ID_MAX_BYTES),
    ScalarField("published", "INT64"),
)
