"""Two-tower retriever: a query tower and a document tower mapping text to L2-normalised vectors.

Each tower is `TextEncoder`: the masked mean of the text's word vectors plus a learned correction
from a selectable body, L2-normalised:
- `mlp`: a 2-layer MLP over the mean word vector;
- `gru`: a left-to-right GRU, masked mean of its states (right padding cannot change them, so a
  text gets the same vector alone or padded inside a batch, which dynamic batching relies on);
- `attention`: multi-head self-attention -> additive attention -> linear.
The body's last layer starts at zero, so an untrained tower is the bag-of-pretrained-word-vectors
retriever (dev MRR@10 0.42 on the demo set, measured) and training refines it; with a freshly
initialised body instead, 3k training pairs were not enough to get back there (MRR@10 0.03).
The output size is therefore the word-vector size. Towers share one word-embedding table or own one
each (`shared_embeddings`). Relevance is the cosine similarity; training uses InfoNCE.
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
            nn.Linear(config.hidden_dim, config.word_dim),
        )

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean(words, mask))


class GRUPool(nn.Module):
    def __init__(self, config: TwoTowerModelConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(config.word_dim, config.hidden_dim, batch_first=True)
        self.out = nn.Linear(config.hidden_dim, config.word_dim)

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
        self.out = nn.Linear(self.self_attention.out_dim, config.word_dim)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        contextual = self.dropout(self.self_attention(words, mask))
        return self.out(self.pool(contextual, mask))


BODIES = {"mlp": MeanPoolMLP, "gru": GRUPool, "attention": AttentionPool}


def last_linear(body: nn.Module) -> nn.Linear:
    return [m for m in body.modules() if isinstance(m, nn.Linear)][-1]


class TextEncoder(nn.Module):
    """input_ids, attention_mask [B, L] -> unit vectors [B, word_dim]: weighted mean word vector + body correction.

    Each vocabulary entry has a learned pooling weight (`token_weight`), 1 for all at construction;
    `set_token_weights` can start them at IDF values so rare, telling words count for more.
    """

    def __init__(self, config: TwoTowerModelConfig, embedding: nn.Embedding, token_weight: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.token_weight = token_weight
        self.dropout = nn.Dropout(config.dropout)
        self.body = BODIES[config.encoder](config)
        nn.init.zeros_(last_linear(self.body).weight)
        nn.init.zeros_(last_linear(self.body).bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        words = self.embedding(input_ids)
        weights = self.token_weight(input_ids).squeeze(-1).clamp(min=0) * attention_mask.to(words.dtype)
        pooled = (words * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
        correction = self.body(self.dropout(words), attention_mask)
        return F.normalize(pooled + correction, dim=-1)


class TwoTower(nn.Module):
    def __init__(self, config: TwoTowerModelConfig, pretrained: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config

        def embedding() -> nn.Embedding:
            return word_embedding(config.vocab_size, config.word_dim, pretrained, config.freeze_embeddings)

        def token_weight() -> nn.Embedding:
            return nn.Embedding.from_pretrained(torch.ones(config.vocab_size, 1), freeze=False)

        query_embedding, query_weight = embedding(), token_weight()
        shared = config.shared_embeddings
        doc_embedding, doc_weight = (query_embedding, query_weight) if shared else (embedding(), token_weight())
        self.query_tower = TextEncoder(config, query_embedding, query_weight)
        self.doc_tower = TextEncoder(config, doc_embedding, doc_weight)

    def set_token_weights(self, weights: torch.Tensor) -> None:
        """Start both towers' pooling weights at `weights` [vocab] (e.g. IDF over the collection)."""
        with torch.no_grad():
            for tower in (self.query_tower, self.doc_tower):
                tower.token_weight.weight.copy_(weights.reshape(-1, 1))


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: queries [B, D] and docs [B + extra, D]; doc i is query i's positive.

    Extra rows beyond B (e.g. BM25 hard negatives) act as negatives for every query.
    """
    logits = queries @ docs.T / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0]))
