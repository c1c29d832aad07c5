"""Storage limits of the Milvus collections that requests must respect (VARCHAR lengths count UTF-8 bytes)."""

from __future__ import annotations

ID_MAX_BYTES = 64  # primary keys (news and passage ids) and a passage's doc_id
CATEGORY_MAX_BYTES = 128  # news category/subcategory and passage category
