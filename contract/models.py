"""The serving contract between exported models and their callers.

`export/` writes ONNX graphs and Triton configs with exactly these names; the gateway calls them
with these names. Batch is always dim 0 and dynamic; every length (tokens, history) is dynamic too.

| model               | inputs                                                  | output                 |
|---------------------|---------------------------------------------------------|------------------------|
| nrms_news_encoder   | input_ids INT64 [B, L], attention_mask INT64 [B, L]     | embedding FP32 [B, D]  |
| nrms_user_encoder   | history FP32 [B, H, D], history_mask INT64 [B, H]       | embedding FP32 [B, D]  |
| query_encoder       | input_ids INT64 [B, L], attention_mask INT64 [B, L]     | embedding FP32 [B, E]  |
| doc_encoder         | input_ids INT64 [B, L], attention_mask INT64 [B, L]     | embedding FP32 [B, E]  |

Empty history: H must be >= 1; a row whose history_mask is all zeros gets the model's learned
cold-start user vector. Masks are 1 for real tokens / clicked items and 0 for padding.
Two-tower embeddings are L2-normalised (cosine == inner product); NRMS vectors are not (dot product).
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
HISTORY = "history"
HISTORY_MASK = "history_mask"
EMBEDDING = "embedding"

NEWS_ENCODER = "nrms_news_encoder"
USER_ENCODER = "nrms_user_encoder"
QUERY_ENCODER = "query_encoder"
DOC_ENCODER = "doc_encoder"
MODEL_NAMES = (NEWS_ENCODER, USER_ENCODER, QUERY_ENCODER, DOC_ENCODER)

# Text fields: each has one tokenizer file (`<field>.json`) and one encoder that reads it.
TITLE = "title"
QUERY = "query"
PASSAGE = "passage"
ENCODER_FOR_FIELD = {TITLE: NEWS_ENCODER, QUERY: QUERY_ENCODER, PASSAGE: DOC_ENCODER}
TEXT_FIELDS = tuple(ENCODER_FOR_FIELD)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str  # Triton dtype name: "INT64", "FP32"
    dims: tuple[int, ...]  # without the batch dim; -1 is dynamic; "D" dims are filled in at export


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    text_field: str | None  # which tokenizer file feeds it ("title", "query", "passage"), None for vectors


def text_model(name: str, dim: int) -> ModelSpec:
    """The spec of text encoder `name` (a value of ENCODER_FOR_FIELD) with output size `dim`."""
    (text_field,) = (field for field, model in ENCODER_FOR_FIELD.items() if model == name)
    return ModelSpec(
        name=name,
        inputs=(TensorSpec(INPUT_IDS, "INT64", (-1,)), TensorSpec(ATTENTION_MASK, "INT64", (-1,))),
        output=TensorSpec(EMBEDDING, "FP32", (dim,)),
        text_field=text_field,
    )


def user_model(name: str, dim: int) -> ModelSpec:
    """The spec of the user encoder `name` with news vectors of size `dim`."""
    return ModelSpec(
        name=name,
        inputs=(TensorSpec(HISTORY, "FP32", (-1, dim)), TensorSpec(HISTORY_MASK, "INT64", (-1,))),
        output=TensorSpec(EMBEDDING, "FP32", (dim,)),
        text_field=None,
    )
