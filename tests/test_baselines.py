"""Recommendation and retrieval baselines on tiny hand-made data where the right answer is obvious."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from training.baselines import (
    BagOfWordsRetriever,
    BM25Retriever,
    MiniLMRetriever,
    PopularityRanker,
    RandomRanker,
    evaluate_recommender,
    evaluate_retriever,
    tokenize,
)
from training.data.types import Impression, RetrievalSplit

MIND_KEYS = {"auc", "mrr", "ndcg@5", "ndcg@10"}
RETRIEVAL_KEYS = {"mrr@10", "recall@1", "recall@5", "recall@10", "recall@100", "ndcg@10", "map"}


def impression(impression_id, user, history, candidates, labels=None):
    return Impression(
        impression_id=impression_id,
        user_id=user,
        time=datetime(2019, 11, 14),
        history=tuple(history),
        candidates=tuple(candidates),
        labels=None if labels is None else tuple(labels),
    )


# ---------------------------------------------------------------- recommendation

TRAIN = [
    impression("T1", "u1", ["n1", "n2"], ["n3", "n4", "n5"], [1, 0, 1]),
    impression("T2", "u1", ["n1", "n2"], ["n3", "n6"], [1, 0]),  # u1's history again
    impression("T3", "u2", ["n2"], ["n4", "n5", "n3"], [0, 1, 1]),
]
DEV = [impression("D1", "u3", ["n1", "n6"], ["n4", "n6"], [1, 0])]  # its label on n4 must not count


def test_popularity_counts_train_clicks_and_each_users_history_once():
    ranker = PopularityRanker.from_impressions(TRAIN, eval_histories=DEV)
    # train clicks: n3 in T1, T2, T3 -> 3; n5 in T1, T3 -> 2
    # histories, one per user: u1 {n1, n2}, u2 {n2}, u3 {n1, n6} -> n1 2, n2 2, n6 1
    assert ranker.click_counts == {"n1": 2, "n2": 2, "n3": 3, "n5": 2, "n6": 1}


def test_popularity_scores_candidates_by_count_unseen_as_zero():
    ranker = PopularityRanker.from_impressions(TRAIN, eval_histories=DEV)
    scores = ranker.score(impression("D2", "u4", [], ["n4", "n3", "n6", "brand-new"]))
    np.testing.assert_array_equal(scores, [0, 3, 1, 0])


def test_popularity_without_eval_histories_ignores_them():
    assert "n6" not in PopularityRanker.from_impressions(TRAIN).click_counts


@pytest.mark.parametrize("labels", [None, [1, 0]])
def test_popularity_rejects_train_impressions_without_one_label_per_candidate(labels):
    with pytest.raises(ValueError, match="train impression X9"):
        PopularityRanker.from_impressions([impression("X9", "u1", [], ["n1"], labels)])


def test_random_ranker_is_deterministic_per_seed_and_impression():
    first, second = TRAIN[0], TRAIN[1]
    ranker = RandomRanker(seed=7)
    scores = ranker.score(first)
    assert scores.shape == (len(first.candidates),)
    RandomRanker(seed=7).score(second)  # other calls in between do not shift the sequence
    np.testing.assert_array_equal(RandomRanker(seed=7).score(first), scores)
    assert not np.array_equal(RandomRanker(seed=8).score(first), scores)
    assert not np.array_equal(ranker.score(impression("other-id", *_fields(first))), scores)


def _fields(imp):
    return imp.user_id, imp.history, imp.candidates, imp.labels


def test_evaluate_recommender_popularity_ranks_popular_click_first():
    ranker = PopularityRanker.from_impressions(TRAIN)
    dev = [impression("D3", "u5", [], ["n4", "n3"], [0, 1])]  # n3 (3 clicks) beats n4 (0)
    result = evaluate_recommender(ranker, dev)
    assert set(result) == MIND_KEYS
    assert result == {"auc": 1.0, "mrr": 1.0, "ndcg@5": 1.0, "ndcg@10": 1.0}


def test_evaluate_recommender_random_returns_mind_keys():
    assert set(evaluate_recommender(RandomRanker(seed=0), TRAIN)) == MIND_KEYS


def test_evaluate_recommender_rejects_unlabelled_impressions():
    with pytest.raises(ValueError, match="D9"):
        evaluate_recommender(RandomRanker(seed=0), [impression("D9", "u1", [], ["n1", "n2"])])


def test_evaluate_recommender_names_impression_with_wrong_score_count():
    class OneScoreTooMany:
        def score(self, imp):
            return np.zeros(len(imp.candidates) + 1)

    with pytest.raises(ValueError, match="impression T2"):
        evaluate_recommender(OneScoreTooMany(), TRAIN[1:])  # T2 is first: named by id, not position


# ---------------------------------------------------------------- retrieval

COLLECTION = {
    "p-cat": "The cat sat on the mat and purred at the dog.",
    "p-rocket": "The rocket launched into orbit from the launch pad at dawn.",
    "p-bread": "Bake the bread in a hot oven for forty minutes.",
    "p-tax": "The council raised the property tax to fund new schools.",
}
OBVIOUS_QUERIES = {"q-rocket": "rocket launch orbit", "q-bread": "bread oven", "q-cat": "cat on a mat"}
OBVIOUS_ANSWERS = {"q-rocket": "p-rocket", "q-bread": "p-bread", "q-cat": "p-cat"}
LEXICAL = [BM25Retriever, BagOfWordsRetriever]


def test_tokenize_lowercases_and_drops_stop_words_and_single_characters():
    assert tokenize("The Cat's HAT, a hat!") == ["cat", "hat", "hat"]


@pytest.mark.parametrize("retriever_class", LEXICAL)
def test_lexical_retriever_ranks_obvious_passage_first(retriever_class):
    retriever = retriever_class()
    retriever.fit(COLLECTION)
    run = retriever.search(OBVIOUS_QUERIES, k=3)
    assert {qid: ranking[0] for qid, ranking in run.items()} == OBVIOUS_ANSWERS


def test_rare_term_dominates_under_bm25_but_not_bag_of_words():
    collection = {
        "many-cats": "cat cat cat cat cat cat",
        "axolotl": "axolotl dog bird fish lion",
        **{f"cat-{verb}": f"cat {verb}" for verb in ("sleeps", "eats", "runs", "jumps")},
    }
    query = {"q": "cat axolotl"}
    # bag of words: cos(q, many-cats) = 6 / (sqrt(2) * 6) = 0.71 > cos(q, axolotl) = 1 / (sqrt(2) * sqrt(5)) = 0.32
    # BM25: "cat" is in 5 of 6 passages (idf ~0.24), "axolotl" in 1 (idf ~1.54); tf saturates, so
    # six "cat"s score ~0.38 while one "axolotl" scores ~1.39
    bow, bm25 = BagOfWordsRetriever(), BM25Retriever()
    bow.fit(collection)
    bm25.fit(collection)
    assert bow.search(query, k=2)["q"][0] == "many-cats"
    assert bm25.search(query, k=2)["q"][0] == "axolotl"


@pytest.mark.parametrize("retriever_class", LEXICAL)
def test_ties_break_by_collection_order(retriever_class):
    retriever = retriever_class()
    retriever.fit({pid: "same cat text" for pid in ("e", "a", "d", "b", "c")})
    assert retriever.search({"q": "cat"}, k=3) == {"q": ["e", "a", "d"]}


@pytest.mark.parametrize("retriever_class", LEXICAL)
def test_lexical_retriever_returns_only_passages_sharing_a_term(retriever_class):
    retriever = retriever_class()
    retriever.fit(COLLECTION)
    run = retriever.search({"unknown": "zebra", "stop-words": "the and of", "one": "bread"}, k=100)
    assert run == {"unknown": [], "stop-words": [], "one": ["p-bread"]}


@pytest.mark.parametrize("retriever_class", LEXICAL)
def test_batching_does_not_change_the_run(retriever_class):
    one_by_one, all_at_once = retriever_class(batch_size=1), retriever_class(batch_size=64)
    one_by_one.fit(COLLECTION)
    all_at_once.fit(COLLECTION)
    assert one_by_one.search(OBVIOUS_QUERIES, k=4) == all_at_once.search(OBVIOUS_QUERIES, k=4)


def test_retriever_misuse_raises_clear_errors():
    with pytest.raises(RuntimeError, match=r"BM25Retriever.search called before fit"):
        BM25Retriever().search({"q": "cat"}, k=1)
    with pytest.raises(ValueError, match="collection: no passages"):
        BM25Retriever().fit({})
    retriever = BagOfWordsRetriever()
    retriever.fit(COLLECTION)
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.search({"q": "cat"}, k=0)


@pytest.mark.parametrize("retriever_class", LEXICAL)
def test_evaluate_retriever_scores_obvious_split_perfectly(retriever_class):
    split = RetrievalSplit(
        queries={**OBVIOUS_QUERIES, "unjudged": "tax"},
        qrels={qid: {pid: 1} for qid, pid in OBVIOUS_ANSWERS.items()},
    )
    result = evaluate_retriever(retriever_class(), COLLECTION, split)
    assert set(result) == RETRIEVAL_KEYS
    assert result["mrr@10"] == result["recall@1"] == result["map"] == 1.0


def test_evaluate_retriever_rejects_judged_query_without_text():
    split = RetrievalSplit(queries={}, qrels={"q-lost": {"p-cat": 1}})
    with pytest.raises(ValueError, match="q-lost"):
        evaluate_retriever(BM25Retriever(), COLLECTION, split)


@pytest.mark.slow
def test_minilm_matches_meaning_and_caches_passage_embeddings(tmp_path, monkeypatch):
    retriever = MiniLMRetriever(cache_dir=tmp_path)
    retriever.fit(COLLECTION)
    paraphrase = {"q-kitten": "a kitten resting on a rug"}  # no term shared with any passage
    run = retriever.search({**OBVIOUS_QUERIES, **paraphrase}, k=2)
    assert {qid: run[qid][0] for qid in OBVIOUS_QUERIES} == OBVIOUS_ANSWERS
    assert run["q-kitten"][0] == "p-cat"
    assert len(run["q-kitten"]) == 2  # dense scores: every passage is a candidate

    assert len(list(tmp_path.glob("minilm-*.npy"))) == 1
    from_cache = MiniLMRetriever(cache_dir=tmp_path)
    from_cache._model = retriever._model  # share the loaded model, the test is about the passages

    def no_encoding(texts):
        raise AssertionError("passages were encoded again instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(from_cache, "_encode", no_encoding)
        from_cache.fit(COLLECTION)
    assert from_cache.search(paraphrase, k=2) == {"q-kitten": run["q-kitten"]}

    from_cache.fit({**COLLECTION, "p-extra": "A new passage changes the collection."})
    assert len(list(tmp_path.glob("minilm-*.npy"))) == 2
