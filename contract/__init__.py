"""The contract that training, export, the gateway and the dev stack share; it imports nothing of ours.

- `contract.models`: the served encoders (names, tensors, which text field feeds each).
- `contract.tokenizer`: texts -> token ids, the one code path used by training and the gateway.
- `contract.layout`: where every generated file lives.
- `contract.schemas`: the Milvus collections' fields (names, types, byte limits) as plain data.
"""

from contract.models import (
    ATTENTION_MASK,
    DOC_ENCODER,
    EMBEDDING,
    ENCODER_FOR_FIELD,
    HISTORY,
    HISTORY_MASK,
    INPUT_IDS,
    MODEL_NAMES,
    NEWS_ENCODER,
    PASSAGE,
    QUERY,
    QUERY_ENCODER,
    TEXT_FIELDS,
    TITLE,
    USER_ENCODER,
    ModelSpec,
    TensorSpec,
    text_model,
    user_model,
)

__all__ = [
    "ATTENTION_MASK",
    "DOC_ENCODER",
    "EMBEDDING",
    "ENCODER_FOR_FIELD",
    "HISTORY",
    "HISTORY_MASK",
    "INPUT_IDS",
    "MODEL_NAMES",
    "NEWS_ENCODER",
    "PASSAGE",
    "QUERY",
    "QUERY_ENCODER",
    "TEXT_FIELDS",
    "TITLE",
    "USER_ENCODER",
    "ModelSpec",
    "TensorSpec",
    "text_model",
    "user_model",
]
