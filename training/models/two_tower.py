"""Two-tower retriever: a query tower and a document tower mapping text to L2-normalised vectors.

Each tower is `TextEncoder` with a selectable body:
- `mlp`: masked mean of word vectors -> 2-layer MLP;
- `gru`: a left-to-right GRU, masked mean of its states (right padding cannot change them, so a
  text gets the same vector alone or padded inside a batch, which dynamic batching relies on);
- `attention`: multi-head self-attention -> additive attention -> linear.
Towers share one word-embedding table or own one each (`shared_embeddings`). Relevance is the
cosine similarity (= inner product of the normalised outputs); training uses InfoNCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TwoTowerModelConfig
from training.models.layers import AdditiveAttention, MultiHeadSelfAttention, masked_mean, word_embedding


class MeanPoolMLP(nn.Module):
    def __init__(self, config: TwoTowerModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(config.word_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.out_dim),
        )

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean(words, mask))


class GRUPool(nn.Module):
    def __init__(self, config: TwoTowerModelConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(config.word_dim, config.hidden_dim, batch_first=True)
        self.out = nn.Linear(config.hidden_dim, config.out_dim)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(words)
        return self.out(masked_mean(states, mask))


class AttentionPool(nn.Module):
    def __init__(self, config: TwoTowerModelConfig) -> None:
        super().__init__()
        head_dim = config.hidden_dim // config.heads
        self.self_attention = MultiHeadSelfAttention(config.word_dim, config.heads, head_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.pool = AdditiveAttention(self.self_attention.out_dim, config.hidden_dim)
        self.out = nn.Linear(self.self_attention.out_dim, config.out_dim)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        contextual = self.dropout(self.self_attention(words, mask))
        return self.out(self.pool(contextual, mask))


BODIES = {"mlp": MeanPoolMLP, "gru": GRUPool, "attention": AttentionPool}


class TextEncoder(nn.Module):
    """input_ids, attention_mask [B, L] -> unit vectors [B, out_dim]."""

    def __init__(self, config: TwoTowerModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(config.dropout)
        self.body = BODIES[config.encoder](config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        words = self.dropout(self.embedding(input_ids))
        return F.normalize(self.body(words, attention_mask), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, config: TwoTowerModelConfig, pretrained: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config

        def embedding() -> nn.Embedding:
            return word_embedding(config.vocab_size, config.word_dim, pretrained, config.freeze_embeddings)

        query_embedding = embedding()
        doc_embedding = query_embedding if config.shared_embeddings else embedding()
        self.query_tower = TextEncoder(config, query_embedding)
        self.doc_tower = TextEncoder(config, doc_embedding)


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: queries [B, D] and docs [B + extra, D]; doc i is query i's positive.

    Extra rows beyond B (e.g. BM25 hard negatives) act as negatives for every query.
    """
    logits = queries @ docs.T / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0]))
