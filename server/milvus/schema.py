"""pymilvus schemas built from `contract.schemas`, and the check that an existing collection matches.

Collections: primary key `id` VARCHAR(64), `vector` FLOAT_VECTOR(dim), HNSW index, metric IP, plus the
scalar fields of `contract.schemas` (news: NRMS scores are dot products of unnormalised vectors;
passages: vectors are L2-normalised, so IP = cosine).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pymilvus import CollectionSchema, DataType, FieldSchema, MilvusClient

from contract.schemas import ID, ID_MAX_BYTES, VECTOR, ScalarField

METRIC = "IP"
INDEX = "HNSW"

Signature = dict[str, tuple[str, int | None, bool]]


class SchemaMismatch(RuntimeError):
    """An existing collection differs from the schema this gateway expects (raised by ensure_collections)."""


@dataclass(frozen=True)
class CollectionSpec:
    """What one collection must look like: id, vector(dim) and `scalars`."""

    name: str
    dim: int
    scalars: tuple[ScalarField, ...]

    def schema(self) -> CollectionSchema:
        fields = [
            FieldSchema(ID, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES),
            FieldSchema(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim),
            *(_scalar_schema(scalar) for scalar in self.scalars),
        ]
        return CollectionSchema(fields, enable_dynamic_field=False)

    def signature(self) -> Signature:
        """Field name -> (type, dim or max length, is primary): what ensure_collections compares."""
        return signature(field.to_dict() for field in self.schema().fields)


@dataclass(frozen=True)
class HnswParams:
    """The vector index's build parameters."""

    m: int
    ef_construction: int


@dataclass(frozen=True)
class Layout:
    """What calls need to know about an existing collection, read once from the server."""

    dim: int
    fields: frozenset[str]

    @classmethod
    def described(cls, fields: Iterable[Mapping[str, Any]]) -> Layout:
        """From describe_collection()['fields']."""
        described = list(fields)
        dim = next(int(f["params"]["dim"]) for f in described if f["type"] == DataType.FLOAT_VECTOR)
        return cls(dim, frozenset(f["name"] for f in described))


def _scalar_schema(scalar: ScalarField) -> FieldSchema:
    limits = {"max_length": scalar.max_bytes} if scalar.max_bytes else {}
    return FieldSchema(scalar.name, DataType[scalar.type], **limits)


def signature(fields: Iterable[Mapping[str, Any]]) -> Signature:
    """The comparable form of describe_collection()['fields'] (or FieldSchema.to_dict()s)."""
    found: Signature = {}
    for f in fields:
        params = f.get("params", {})
        size = params.get("dim", params.get("max_length"))
        found[f["name"]] = (
            DataType(f["type"]).name,
            int(size) if size is not None else None,
            bool(f.get("is_primary")),
        )
    return found


def schema_problems(spec: CollectionSpec, fields: Iterable[Mapping[str, Any]]) -> list[str]:
    """How the described `fields` of an existing collection differ from `spec` (empty when they match)."""
    expected, found = spec.signature(), signature(fields)
    return [
        f"{name}: expected {expected.get(name, 'no field')}, found {found.get(name, 'no field')}"
        for name in sorted(expected.keys() | found.keys())
        if expected.get(name) != found.get(name)
    ]


def ensure_collection(client: MilvusClient, spec: CollectionSpec, hnsw: HnswParams, timeout: float) -> None:
    """Create `spec`'s collection (schema, HNSW index, loaded) if missing, else check and load it.

    Raises SchemaMismatch when the existing collection differs (fields, dim, lengths, metric).
    """
    index = client.prepare_index_params()
    index.add_index(
        VECTOR, index_type=INDEX, metric_type=METRIC, params={"M": hnsw.m, "efConstruction": hnsw.ef_construction}
    )
    if not client.has_collection(spec.name, timeout=timeout):
        # Creates, indexes and loads. Bounded is the default for other clients; the store sets levels per call.
        client.create_collection(
            spec.name, schema=spec.schema(), index_params=index, consistency_level="Bounded", timeout=timeout
        )
        return
    problems = schema_problems(spec, client.describe_collection(spec.name, timeout=timeout)["fields"])
    if not problems:
        if not client.list_indexes(spec.name, field_name=VECTOR, timeout=timeout):
            client.create_index(spec.name, index, timeout=timeout)  # an earlier setup stopped half-way
        metrics = {
            client.describe_index(spec.name, name, timeout=timeout).get("metric_type")
            for name in client.list_indexes(spec.name, field_name=VECTOR, timeout=timeout)
        }
        problems = [f"{VECTOR} index metric: expected {METRIC}, found {metric}" for metric in metrics - {METRIC}]
    if problems:
        raise SchemaMismatch(
            f"milvus collection '{spec.name}' does not match this gateway ({'; '.join(problems)}); "
            "drop it or configure another collection name"
        )
    client.load_collection(spec.name, timeout=timeout)
