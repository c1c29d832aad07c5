"""Hypothesis strategies for any protobuf message, driven by its descriptor, biased towards hostile values.

`messages(descriptor)` fills every field of a message (and of the messages inside it) with values a
careless or malicious client might send: unicode and control characters, strings just under, at and over
the gateway's byte and character limits and far beyond them, quote and expression injection, integers at
their type's limits, NaN and infinities, repeated fields at and over their limits (up to 10,000
entries, a field at most about 8 MiB), and enum numbers the schema does not name. Fields are sometimes left
unset, so presence (`optional`, sub-messages) is exercised too. Because it reads the descriptor, a new RPC or field is
fuzzed without changes here.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from contract.schemas import CATEGORY_MAX_BYTES, ID_MAX_BYTES

# Lengths around the gateway's limits: ids and categories (UTF-8 bytes), texts (characters, default
# gateway.max_text_chars 2000), and far beyond any of them.
EDGE_LENGTHS = (ID_MAX_BYTES - 1, ID_MAX_BYTES, ID_MAX_BYTES + 1, CATEGORY_MAX_BYTES + 1, 2000, 2001, 100_000)
# Repeated-field sizes around the limits (history 500, filter categories 50, upsert batch) and beyond.
EDGE_COUNTS = (49, 50, 51, 499, 500, 501, 10_000)
HOSTILE_STRINGS = (
    '"',
    "'",
    "\\",
    '" or id != "',
    '") or (1 == 1',
    "id in [1] || true",
    "%s%s%n",
    "\x00",
    "\u202e\u200b\ufeff",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧨",
    "../../etc/passwd",
    "<|im_start|>system",
    "NaN",
)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 4
# A repeated field is cut to about this many bytes: twice gRPC's default 4 MiB receive limit, so oversized
# requests are still sent, without the gigabyte ones (10,000 copies of a 200 KB entry) that take a client
# longer to build and send than any deadline.
OVERSIZE_BYTES = 8 * 2**20


def hostile_text() -> st.SearchStrategy[str]:
    """Strings a gateway must survive: any unicode, control and format characters, limit-sized and huge."""
    control = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"], codec="utf-8")
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=control, max_size=10),
        st.sampled_from(HOSTILE_STRINGS),
        st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.sampled_from(EDGE_LENGTHS)),
    )


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(low, high),
        st.sampled_from([low, high, -1, 0, 1, 2, 3, 100, 101]).filter(lambda v: low <= v <= high),
    )


def scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Values for one (non-repeated) field of `field`'s type."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32) | st.sampled_from(
            [0.0, -0.0, 1.0, 3.4e38, float("nan"), float("inf"), -float("inf")]
        )
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_ENUM:
        named = [value.number for value in field.enum_type.values]
        return st.sampled_from(named) | integers(-(2**31), 2**31 - 1)  # proto3 enums are open: unknown ones too
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    low, high = INT_RANGES[kind]
    return integers(low, high)


def repeated(field: FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
    """A few distinct values, or one value repeated to a size around a limit (cheap to generate)."""
    element = scalar(field, depth)
    return st.one_of(st.lists(element, max_size=4), st.builds(copies, element, st.sampled_from(EDGE_COUNTS)))


def copies(value: Any, count: int) -> list[Any]:
    """`count` copies of `value`, fewer where they would come to more than OVERSIZE_BYTES."""
    return [value] * min(count, max(1, OVERSIZE_BYTES // max(1, encoded_size(value))))


def encoded_size(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(value) if isinstance(value, bytes) else 8


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with each field either unset or set to a generated value."""
    if depth > MAX_DEPTH:
        return st.just(GetMessageClass(descriptor)())
    fields = {
        field.name: st.none() | (repeated(field, depth) if field.is_repeated else scalar(field, depth))
        for field in descriptor.fields
    }
    return st.fixed_dictionaries(fields).map(lambda values: build(descriptor, values))


def build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = GetMessageClass(descriptor)()
    for name, value in values.items():
        if value is None:
            continue
        field = descriptor.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            target = getattr(message, name)
            for item in value if field.is_repeated else [value]:
                (target.add() if field.is_repeated else target).CopyFrom(item)
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message
