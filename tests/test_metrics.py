"""Metric definitions checked against arithmetic done by hand, edge cases, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from training.metrics import mind_metrics, retrieval_keys, retrieval_metrics

LOG2_3 = math.log2(3)  # discount of rank 2


# ---------------------------------------------------------------- MIND group metrics


def test_mind_metrics_single_impression_by_hand():
    # scores rank the candidates 0 (clicked), 1, 3 (clicked), 2 -> ranked labels [1, 0, 1, 0]
    result = mind_metrics([[1, 0, 0, 1]], [[0.9, 0.8, 0.3, 0.5]])
    # AUC: (pos, neg) pairs 0.9>0.8 yes, 0.9>0.3 yes, 0.5>0.8 no, 0.5>0.3 yes -> 3/4
    assert result["auc"] == pytest.approx(0.75)
    # MRR: clicks at ranks 1 and 3 -> (1/1 + 1/3) / 2
    assert result["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal [1, 1, 0, 0] = 1 + 1/log2(3)
    expected_ndcg = 1.5 / (1 + 1 / LOG2_3)
    assert result["ndcg@5"] == pytest.approx(expected_ndcg)
    assert result["ndcg@10"] == pytest.approx(expected_ndcg)


def test_mind_metrics_average_over_impressions():
    labels = [[1, 0, 0, 1], [0, 1, 0]]
    scores = [[0.9, 0.8, 0.3, 0.5], [0.1, 0.2, 0.3]]
    result = mind_metrics(labels, scores)
    # impression 2 ranks candidates 2, 1 (clicked), 0: AUC 1/2 (beats 0.1, loses to 0.3),
    # MRR 1/2, nDCG = (1/log2(3)) / 1
    assert result["auc"] == pytest.approx((0.75 + 0.5) / 2)
    assert result["mrr"] == pytest.approx(((1 + 1 / 3) / 2 + 1 / 2) / 2)
    assert result["ndcg@10"] == pytest.approx((1.5 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 2)


def test_mind_ndcg_cutoffs_differ():
    # the only click is ranked 6th of 7
    result = mind_metrics([[0, 0, 0, 0, 0, 1, 0]], [[0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    assert result["ndcg@5"] == 0.0
    assert result["ndcg@10"] == pytest.approx(1 / math.log2(7))  # ideal DCG is 1
    assert result["mrr"] == pytest.approx(1 / 6)
    assert result["auc"] == pytest.approx(1 / 6)  # beats 1 of 6 non-clicked candidates


def test_mind_ties_break_by_input_order_for_ranks_and_count_half_for_auc():
    click_listed_second = mind_metrics([[0, 1]], [[0.5, 0.5]])
    click_listed_first = mind_metrics([[1, 0]], [[0.5, 0.5]])
    assert click_listed_second["mrr"] == pytest.approx(1 / 2)
    assert click_listed_second["ndcg@5"] == pytest.approx(1 / LOG2_3)
    assert click_listed_first["mrr"] == 1.0
    assert click_listed_first["ndcg@5"] == 1.0
    assert click_listed_second["auc"] == click_listed_first["auc"] == 0.5


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_mind_single_class_impression_raises_naming_it(labels):
    with pytest.raises(ValueError, match="impression N7"):
        mind_metrics([[1, 0], labels], [[0.2, 0.1], [0.0] * len(labels)], names=["N3", "N7"])


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([[1, 0]], [[0.1, 0.2, 0.3]], "2 labels but 3 scores"),
        ([[1, 2]], [[0.1, 0.2]], "labels must be 0 or 1"),
        ([[1, 0]], [[0.1, float("nan")]], "finite"),
        ([], [], "no impressions"),
        ([[1, 0]], [], "1 impressions but scores has 0"),
    ],
)
def test_mind_bad_input_raises(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        mind_metrics(labels, scores)


def test_mind_metrics_returns_exactly_the_four_keys():
    assert set(mind_metrics([[1, 0]], [[1.0, 0.0]])) == {"auc", "mrr", "ndcg@5", "ndcg@10"}


@st.composite
def impressions(draw, min_size=2, max_size=20):
    """Labels with both classes and scores drawn from few values, so ties are frequent."""
    n = draw(st.integers(min_size, max_size))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < n))
    scores = draw(st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n))
    return labels, scores


@given(impressions())
def test_auc_equals_sklearn_roc_auc_score(impression):
    labels, scores = impression
    assert mind_metrics([labels], [scores])["auc"] == pytest.approx(roc_auc_score(labels, scores))


@given(st.lists(impressions(), min_size=1, max_size=5))
def test_mind_metrics_lie_in_unit_interval(batch):
    result = mind_metrics([y for y, _ in batch], [s for _, s in batch])
    assert all(0.0 <= value <= 1.0 for value in result.values())


@given(impressions())
def test_mind_perfect_ranking(impression):
    labels, _ = impression
    result = mind_metrics([labels], [[float(y) for y in labels]])
    assert result["auc"] == result["ndcg@5"] == result["ndcg@10"] == pytest.approx(1.0)
    # MIND's MRR averages 1/rank over all clicks: P clicks at ranks 1..P give H(P) / P
    clicks = sum(labels)
    assert result["mrr"] == pytest.approx(sum(1 / r for r in range(1, clicks + 1)) / clicks)


@given(st.integers(2, 30), st.data())
def test_mind_reversed_perfect_ranking_with_one_click(n, data):
    click = data.draw(st.integers(0, n - 1))
    labels = [int(i == click) for i in range(n)]
    reversed_scores = [-float(y) for y in labels]  # the click scores lowest
    result = mind_metrics([labels], [reversed_scores])
    assert result["auc"] == 0.0
    assert result["mrr"] == pytest.approx(1 / n)


# ---------------------------------------------------------------- retrieval metrics


def test_retrieval_metrics_by_hand():
    qrels = {"q1": {"p1": 1, "p2": 2}, "q2": {"p9": 1}, "q3": {"p7": 1}}
    run = {
        "q1": ["p3", "p2", "p4", "p1"],  # relevant at ranks 2 (grade 2) and 4 (grade 1)
        "q2": ["p5", "p6"],  # nothing relevant retrieved
        # q3 missing from the run: counts as zero
        "q_unjudged": ["p1"],  # not in qrels: ignored
    }
    result = retrieval_metrics(run, qrels)
    # q1: MRR@10 = 1/2; recall@1 = 0, recall@5/10/100 = 2/2;
    #     DCG@10 = 2/log2(3) + 1/log2(5), ideal = 2/log2(2) + 1/log2(3);
    #     AP = (P@2 + P@4) / 2 = (1/2 + 2/4) / 2 = 1/2
    ndcg_q1 = (2 / LOG2_3 + 1 / math.log2(5)) / (2 + 1 / LOG2_3)
    assert result == pytest.approx(
        {
            "mrr@10": 0.5 / 3,
            "recall@1": 0.0,
            "recall@5": 1 / 3,
            "recall@10": 1 / 3,
            "recall@100": 1 / 3,
            "ndcg@10": ndcg_q1 / 3,
            "map": 0.5 / 3,
        }
    )


def test_retrieval_relevant_beyond_rank_10():
    run = {"q": [f"n{i}" for i in range(10)] + ["hit"]}  # the relevant passage is 11th
    result = retrieval_metrics(run, {"q": {"hit": 1}})
    assert result["mrr@10"] == result["recall@10"] == result["ndcg@10"] == 0.0
    assert result["recall@100"] == 1.0
    assert result["map"] == pytest.approx(1 / 11)  # P@11 = 1/11, one relevant


def test_retrieval_all_relevant_at_top():
    result = retrieval_metrics({"q": ["a", "b", "c"]}, {"q": {"a": 1, "b": 1, "c": 0}})
    assert result["mrr@10"] == result["ndcg@10"] == result["map"] == result["recall@5"] == 1.0
    assert result["recall@1"] == 0.5  # one of two relevant passages in the top 1


def test_retrieval_ndcg_uses_graded_linear_gain():
    qrels = {"q": {"p1": 1, "p2": 2}}
    swapped = retrieval_metrics({"q": ["p1", "p2"]}, qrels)
    # DCG = 1/log2(2) + 2/log2(3); ideal = 2/log2(2) + 1/log2(3)
    assert swapped["ndcg@10"] == pytest.approx((1 + 2 / LOG2_3) / (2 + 1 / LOG2_3))
    assert retrieval_metrics({"q": ["p2", "p1"]}, qrels)["ndcg@10"] == pytest.approx(1.0)


def test_retrieval_custom_recall_ks_set_the_keys():
    result = retrieval_metrics({"q": ["a"]}, {"q": {"a": 1}}, recall_ks=(3, 50))
    assert tuple(result) == retrieval_keys((3, 50)) == ("mrr@10", "recall@3", "recall@50", "ndcg@10", "map")


def test_retrieval_default_keys():
    result = retrieval_metrics({"q": ["a"]}, {"q": {"a": 1}})
    assert set(result) == {"mrr@10", "recall@1", "recall@5", "recall@10", "recall@100", "ndcg@10", "map"}


@pytest.mark.parametrize(
    ("run", "qrels", "recall_ks", "message"),
    [
        ({"q": ["a", "a"]}, {"q": {"a": 1}}, (1,), r"run\['q'\]: a passage is listed more than once"),
        ({"q": ["a"]}, {"q": {"a": 0}}, (1,), r"qrels\['q'\]: no passage with grade > 0"),
        ({"q": ["a"]}, {}, (1,), "no judged queries"),
        ({"q": ["a"]}, {"q": {"a": 1}}, (0,), "recall_ks"),
    ],
)
def test_retrieval_bad_input_raises(run, qrels, recall_ks, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(run, qrels, recall_ks=recall_ks)


@st.composite
def judged_queries(draw):
    """qrels over a pool of 30 passages and a run that ranks a random subset of the pool."""
    pool = [f"p{i}" for i in range(30)]
    qrels, run = {}, {}
    for q in range(draw(st.integers(1, 4))):
        grades = draw(st.lists(st.integers(0, 3), min_size=30, max_size=30).filter(any))
        qrels[f"q{q}"] = dict(zip(pool, grades, strict=True))
        run[f"q{q}"] = draw(st.permutations(pool))[: draw(st.integers(0, 30))]
    return run, qrels


@given(judged_queries())
def test_retrieval_metrics_lie_in_unit_interval(case):
    run, qrels = case
    assert all(0.0 <= value <= 1.0 for value in retrieval_metrics(run, qrels).values())


@given(judged_queries())
def test_retrieval_perfect_run(case):
    _, qrels = case
    perfect = {qid: sorted(judged, key=judged.__getitem__, reverse=True) for qid, judged in qrels.items()}
    result = retrieval_metrics(perfect, qrels, recall_ks=(1, 5, 100))
    assert result["mrr@10"] == result["ndcg@10"] == result["map"] == pytest.approx(1.0)
    assert result["recall@100"] == pytest.approx(1.0)
    n_relevant = np.array([sum(g > 0 for g in judged.values()) for judged in qrels.values()])
    assert result["recall@5"] == pytest.approx(np.mean(np.minimum(1.0, 5 / n_relevant)))
