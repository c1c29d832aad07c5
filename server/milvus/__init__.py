"""The Milvus adapter: `MilvusStore` (the async façade, `store`), built from one module per job:
`schema` (pymilvus schemas from `contract.schemas`, the SchemaMismatch check), `expressions` (filters
and escaped strings), `arguments` (argument checks), `errors` (pymilvus error -> GatewayError, deadlines)
and `lite` (Milvus Lite's lifecycle)."""

from server.milvus.schema import CollectionSpec, SchemaMismatch
from server.milvus.store import MilvusStore

__all__ = ["CollectionSpec", "MilvusStore", "SchemaMismatch"]
