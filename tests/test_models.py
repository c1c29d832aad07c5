"""NRMS and two-tower modules: masking, the empty-history convention, shapes, and that they can learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.config import NRMSModelConfig, TwoTowerModelConfig
from training.models.nrms import NRMS
from training.models.two_tower import TwoTower, info_nce

NRMS_SMALL = NRMSModelConfig(
    vocab_size=200, word_dim=16, heads=2, head_dim=8, attention_hidden=8, pretrained_embeddings=False, dropout=0.0
)


def tower_config(encoder: str, **overrides: object) -> TwoTowerModelConfig:
    return TwoTowerModelConfig(
        encoder=encoder,
        vocab_size=200,
        word_dim=16,
        hidden_dim=16,
        heads=2,
        pretrained_embeddings=False,
        dropout=0.0,
        **overrides,
    )


def padded(ids: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    row = torch.zeros(1, width, dtype=torch.long)
    row[0, : len(ids)] = torch.tensor(ids)
    mask = (row != 0).long()
    return row, mask


def test_news_vector_does_not_depend_on_padding() -> None:
    torch.manual_seed(0)
    encoder = NRMS(NRMS_SMALL).news_encoder.eval()
    alone = encoder(*padded([5, 6, 7], 3))
    in_a_wider_batch = encoder(*padded([5, 6, 7], 9))
    torch.testing.assert_close(alone, in_a_wider_batch)


def test_user_vector_does_not_depend_on_history_padding() -> None:
    torch.manual_seed(0)
    users = NRMS(NRMS_SMALL).user_encoder.eval()
    history = torch.randn(1, 3, NRMS_SMALL.news_dim)
    wide = torch.cat([history, torch.randn(1, 4, NRMS_SMALL.news_dim)], dim=1)  # junk in the padded slots
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(users(history, mask[:, :3]), users(wide, mask))


def test_empty_history_gives_the_learned_cold_start_vector() -> None:
    torch.manual_seed(0)
    users = NRMS(NRMS_SMALL).user_encoder.eval()
    with torch.no_grad():
        users.cold_start.copy_(torch.arange(NRMS_SMALL.news_dim, dtype=torch.float32))
    history = torch.randn(2, 1, NRMS_SMALL.news_dim)
    out = users(history, torch.tensor([[0], [1]]))
    torch.testing.assert_close(out[0], users.cold_start)
    assert not torch.allclose(out[1], users.cold_start)


def test_nrms_scores_are_dot_products_of_user_and_candidate_vectors() -> None:
    torch.manual_seed(0)
    model = NRMS(NRMS_SMALL).eval()
    titles, mask = torch.randint(1, 200, (4, 5)), torch.ones(4, 5, dtype=torch.long)
    history_index, history_mask = torch.tensor([[0, 1]]), torch.tensor([[1, 1]])
    candidate_index = torch.tensor([[2, 3]])
    logits = model(titles, mask, history_index, history_mask, candidate_index)
    news = model.news_encoder(titles, mask)
    user = model.user_encoder(news[[0, 1]][None], history_mask)
    torch.testing.assert_close(logits, (news[[2, 3]] @ user[0])[None])


@pytest.mark.parametrize("encoder", ["mlp", "gru", "attention"])
def test_tower_outputs_are_unit_vectors_independent_of_padding(encoder: str) -> None:
    torch.manual_seed(0)
    tower = TwoTower(tower_config(encoder)).query_tower.eval()
    alone = tower(*padded([3, 4, 5, 6], 4))
    in_a_wider_batch = tower(*padded([3, 4, 5, 6], 11))
    torch.testing.assert_close(alone, in_a_wider_batch)
    torch.testing.assert_close(alone.norm(dim=-1), torch.ones(1))


@pytest.mark.parametrize("shared", [True, False])
def test_towers_share_word_embeddings_only_when_asked(shared: bool) -> None:
    model = TwoTower(tower_config("mlp", shared_embeddings=shared))
    assert (model.query_tower.embedding.weight is model.doc_tower.embedding.weight) is shared


def test_info_nce_counts_extra_documents_as_negatives_for_every_query() -> None:
    queries = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    positives = queries.clone()
    hard = torch.tensor([[1.0, 0.0]])  # identical to query 0's positive: must raise query 0's loss
    assert info_nce(queries, torch.cat([positives, hard]), 0.1) > info_nce(queries, positives, 0.1)


def test_nrms_learns_a_small_click_pattern() -> None:
    """Users who clicked title 1 click title 2; the model must fit that from a few samples."""
    torch.manual_seed(0)
    model = NRMS(NRMS_SMALL.model_copy(update={"dropout": 0.0}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    titles = torch.randint(1, 200, (6, 4))
    mask = torch.ones(6, 4, dtype=torch.long)
    history_index = torch.tensor([[0], [1]])  # user A clicked title 0, user B title 1
    history_mask = torch.ones(2, 1, dtype=torch.long)
    candidate_index = torch.tensor([[2, 3, 4], [3, 2, 5]])  # A clicks 2 (not 3), B clicks 3 (not 2)
    losses = []
    for _ in range(60):
        logits = model(titles, mask, history_index, history_mask, candidate_index)
        loss = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 < losses[0]


def test_two_tower_learns_to_pair_queries_with_their_passages() -> None:
    torch.manual_seed(0)
    model = TwoTower(tower_config("attention"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    queries, passages = torch.randint(1, 200, (8, 5)), torch.randint(1, 200, (8, 12))
    ones_q, ones_p = torch.ones_like(queries), torch.ones_like(passages)
    losses = []
    for _ in range(60):
        loss = info_nce(model.query_tower(queries, ones_q), model.doc_tower(passages, ones_p), 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
