"""NRMS (Wu et al., 2019): neural news recommendation with multi-head self-attention.

- News encoder: word embeddings -> multi-head self-attention -> additive attention -> news vector.
- User encoder: multi-head self-attention over clicked-news vectors -> additive attention -> user vector.
- Click score: dot product of user and candidate news vectors.

Empty history: the user encoder takes H >= 1 slots; a row whose history mask is all zeros returns
a learned cold-start vector (trained on impressions of users without clicks).
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import NRMSModelConfig
from training.models.layers import AdditiveAttention, MultiHeadSelfAttention, word_embedding


class NewsEncoder(nn.Module):
    def __init__(self, config: NRMSModelConfig, pretrained: torch.Tensor | None = None) -> None:
        super().__init__()
        self.embedding = word_embedding(config.vocab_size, config.word_dim, pretrained, config.freeze_embeddings)
        self.dropout = nn.Dropout(config.dropout)
        self.self_attention = MultiHeadSelfAttention(config.word_dim, config.heads, config.head_dim)
        self.pool = AdditiveAttention(config.news_dim, config.attention_hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, L] -> news vectors [B, news_dim]."""
        words = self.dropout(self.embedding(input_ids))
        contextual = self.dropout(self.self_attention(words, attention_mask))
        return self.pool(contextual, attention_mask)


class UserEncoder(nn.Module):
    def __init__(self, config: NRMSModelConfig) -> None:
        super().__init__()
        dim = config.news_dim
        self.dropout = nn.Dropout(config.dropout)
        self.self_attention = MultiHeadSelfAttention(dim, config.heads, config.head_dim)
        self.pool = AdditiveAttention(dim, config.attention_hidden)
        self.cold_start = nn.Parameter(torch.zeros(dim))

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """history [B, H, D], history_mask [B, H] (H >= 1) -> user vectors [B, D]."""
        contextual = self.dropout(self.self_attention(self.dropout(history), history_mask))
        users = self.pool(contextual, history_mask)
        has_history = history_mask.sum(dim=1, keepdim=True) > 0
        return torch.where(has_history, users, self.cold_start.expand_as(users))


class NRMS(nn.Module):
    """Both encoders; `forward` scores candidates for a batch of (history, candidates) samples."""

    def __init__(self, config: NRMSModelConfig, pretrained: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.news_encoder = NewsEncoder(config, pretrained)
        self.user_encoder = UserEncoder(config)

    def forward(
        self,
        title_ids: torch.Tensor,
        title_mask: torch.Tensor,
        history_index: torch.Tensor,
        history_mask: torch.Tensor,
        candidate_index: torch.Tensor,
    ) -> torch.Tensor:
        """Click logits [B, C].

        The batch's distinct titles are encoded once: title_ids/title_mask [N, L]; history_index
        [B, H] and candidate_index [B, C] index into them (index N, one past the end, is padding).
        """
        news = self.news_encoder(title_ids, title_mask)
        news = torch.cat([news, news.new_zeros(1, news.shape[1])])  # the padding row
        users = self.user_encoder(news[history_index], history_mask)
        return (news[candidate_index] @ users.unsqueeze(-1)).squeeze(-1)
