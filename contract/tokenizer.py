"""Texts -> (input_ids, attention_mask): the one code path that turns text into encoder input.

The tokenizer *definition* (vocabulary, normalisation, truncation length, padding) is a
`tokenizer.json` file per text field, written at training time and shipped next to the served
models by `make export`. Training (`training.text`) and the gateway both encode through this
class, so a text reaches the PyTorch model and the Triton-served ONNX graph as the same ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer


class TextTokenizer:
    """Texts -> int64 ids and mask [batch, longest text in the batch]."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found (run `make export`)")
        return cls(Tokenizer.from_file(str(path)))

    @property
    def max_length(self) -> int | None:
        truncation = self._tokenizer.truncation
        return truncation["max_length"] if truncation else None

    def encode(self, texts: list[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask
