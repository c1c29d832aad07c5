"""Attention blocks shared by the encoders, written to export cleanly to ONNX.

Masks are 1 for real positions and 0 for padding. Masked scores use a large finite negative
(not -inf), so a fully masked row yields uniform weights instead of NaN; callers that can see
fully masked rows (an empty click history) decide what that row means.
"""

from __future__ import annotations

import torch
from torch import nn

MASKED = -1e4  # finite, fp16-safe


class MultiHeadSelfAttention(nn.Module):
    """NRMS-style multi-head self-attention: per-head Q/K/V projections, no output projection."""

    def __init__(self, in_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(in_dim, 3 * heads * head_dim)

    @property
    def out_dim(self) -> int:
        return self.heads * self.head_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, in_dim], mask [B, L] -> [B, L, heads * head_dim]."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5  # [B, heads, L, L]
        scores = scores.masked_fill(mask[:, None, None, :] == 0, MASKED)
        out = scores.softmax(dim=-1) @ v  # [B, heads, L, head_dim]
        return out.transpose(1, 2).reshape(batch, length, self.out_dim)


class AdditiveAttention(nn.Module):
    """Attention pooling with a learned query: weights = softmax(q . tanh(W x + b)) over unmasked positions."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Parameter(torch.randn(hidden) * 0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], mask [B, L] -> [B, D]."""
        scores = torch.tanh(self.proj(x)) @ self.query  # [B, L]
        weights = scores.masked_fill(mask == 0, MASKED).softmax(dim=-1)
        return (weights.unsqueeze(-1) * x).sum(dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, L, D] over positions where mask [B, L] is 1 (zero vector for an empty row)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def word_embedding(vocab_size: int, dim: int, pretrained: torch.Tensor | None, freeze: bool) -> nn.Embedding:
    """An embedding table, optionally initialised from (and frozen to) pre-trained word vectors."""
    if pretrained is not None:
        if tuple(pretrained.shape) != (vocab_size, dim):
            raise ValueError(f"pretrained embeddings {tuple(pretrained.shape)} != ({vocab_size}, {dim})")
        return nn.Embedding.from_pretrained(pretrained.clone(), freeze=freeze, padding_idx=0)
    embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
    embedding.weight.requires_grad_(not freeze)
    return embedding
