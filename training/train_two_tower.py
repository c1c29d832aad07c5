"""Train the two-tower retriever contrastively on MS MARCO-format query/passage pairs.

Each batch holds B (query, relevant passage) pairs; every other passage in the batch is a negative
(in-batch negatives), plus optionally `hard_negatives` passages per query mined with BM25 (top
BM25 hits that are not judged relevant), redrawn each epoch. Loss: InfoNCE with a temperature.
Evaluation ranks the whole collection for every dev query by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.baselines import BM25Retriever
from training.checkpoint import Checkpoint
from training.config import TwoTowerRunConfig
from training.data.msmarco import load_collection, load_qrels, load_queries
from training.data.types import RetrievalSplit
from training.loop import fit, seed_everything
from training.metrics import retrieval_metrics
from training.models.two_tower import TwoTower, info_nce
from training.text import TokenTable, encode_table, minilm_ref, pretrained_word_embeddings, text_tokenizer

RUN_DEPTH = 100
MINED_DEPTH = 20


@dataclass(frozen=True)
class RetrievalData:
    collection: dict[str, str]
    train: RetrievalSplit
    dev: RetrievalSplit


def load_retrieval(data_dir: Path) -> RetrievalData:
    data_dir = Path(data_dir)

    def split(name: str) -> RetrievalSplit:
        return RetrievalSplit(
            load_queries(data_dir / f"queries.{name}.tsv"), load_qrels(data_dir / f"qrels.{name}.tsv")
        )

    return RetrievalData(load_collection(data_dir / "collection.tsv"), split("train"), split("dev"))


def training_pairs(split: RetrievalSplit, collection: dict[str, str]) -> list[tuple[str, str]]:
    """(qid, pid) for every judged-relevant passage that exists in the collection."""
    return [
        (qid, pid)
        for qid in sorted(split.queries)
        for pid, grade in sorted(split.qrels.get(qid, {}).items())
        if grade > 0 and pid in collection
    ]


def dev_subset(split: RetrievalSplit, limit: int | None) -> RetrievalSplit:
    """The first `limit` judged dev queries (all when None): the set models and baselines are scored on."""
    qids = sorted(q for q in split.queries if q in split.qrels)[:limit]
    return RetrievalSplit({q: split.queries[q] for q in qids}, {q: split.qrels[q] for q in qids})


def inverse_document_frequency(passages: TokenTable, vocab_size: int) -> torch.Tensor:
    """BM25's IDF of every word piece over the collection: log(1 + (N - df + 0.5) / (df + 0.5)) > 0."""
    present = torch.zeros(vocab_size)
    for start in range(0, len(passages.keys), 4096):
        ids, mask = passages.ids[start : start + 4096], passages.mask[start : start + 4096]
        rows = torch.zeros(ids.shape[0], vocab_size, dtype=torch.bool)
        rows.scatter_(1, ids * mask, True)  # padding maps to id 0, [PAD], never a real token
        present += rows.sum(dim=0)
    total = len(passages.keys)
    return torch.log1p((total - present + 0.5) / (present + 0.5))


def mine_hard_negatives(data: RetrievalData, depth: int = MINED_DEPTH) -> dict[str, list[str]]:
    """Per training query: BM25's top passages that are not judged relevant."""
    bm25 = BM25Retriever()
    bm25.fit(data.collection)
    run = bm25.search(data.train.queries, k=depth)
    return {
        qid: [pid for pid in ranked if data.train.qrels.get(qid, {}).get(pid, 0) <= 0] for qid, ranked in run.items()
    }


def rank_collection(
    model: TwoTower, queries: TokenTable, passages: TokenTable, depth: int = RUN_DEPTH
) -> dict[str, list[str]]:
    """Top-`depth` passage ids per query by cosine similarity (exact, brute force)."""
    doc_vectors = encode_table(model.doc_tower, passages)
    query_vectors = encode_table(model.query_tower, queries)
    top = torch.topk(query_vectors @ doc_vectors.T, k=min(depth, len(passages.keys)), dim=1).indices
    return {qid: [passages.keys[i] for i in row] for qid, row in zip(queries.keys, top.tolist(), strict=True)}


def train_two_tower(run: TwoTowerRunConfig) -> Checkpoint:
    """Train on the train queries, early-stop on `run.metric` over the dev queries."""
    seed_everything(run.train.seed)
    data = load_retrieval(run.data_dir)
    query_ref, passage_ref = minilm_ref(run.model.max_query_tokens), minilm_ref(run.model.max_passage_tokens)
    passages = TokenTable.build(data.collection, text_tokenizer(passage_ref))
    query_tokenizer = text_tokenizer(query_ref)
    train_queries = TokenTable.build(data.train.queries, query_tokenizer)
    dev = dev_subset(data.dev, run.train.max_dev)
    dev_queries = TokenTable.build(dev.queries, query_tokenizer)
    pairs = training_pairs(data.train, data.collection)
    hard = mine_hard_negatives(data) if run.hard_negatives else {}
    pretrained = pretrained_word_embeddings() if run.model.pretrained_embeddings else None
    model = TwoTower(run.model, pretrained)
    if run.model.idf_pooling:
        model.set_token_weights(inverse_document_frequency(passages, run.model.vocab_size))
    query_row, passage_row = train_queries.index(), passages.index()

    def epoch_batches(epoch: int) -> Iterator[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([run.train.seed, epoch])
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), run.train.batch_size):
            batch = [pairs[i] for i in order[start : start + run.train.batch_size]]
            docs = [passage_row[pid] for _, pid in batch] + [
                passage_row[pid] for qid, _ in batch for pid in draw(hard.get(qid, []), run.hard_negatives, rng)
            ]
            yield [query_row[qid] for qid, _ in batch], docs

    def loss_fn(batch: tuple[list[int], list[int]]) -> torch.Tensor:
        query_rows, doc_rows = batch
        queries = model.query_tower(*train_queries.rows(query_rows))
        docs = model.doc_tower(*passages.rows(doc_rows))
        return info_nce(queries, docs, run.temperature)

    def evaluate() -> dict[str, float]:
        return retrieval_metrics(rank_collection(model, dev_queries, passages), dev.qrels)

    result = fit(
        model,
        epoch_batches=epoch_batches,
        steps_per_epoch=-(-len(pairs) // run.train.batch_size),
        loss_fn=loss_fn,
        evaluate=evaluate,
        config=run.train,
        metric=run.metric,
        label=run.name,
    )
    return Checkpoint.from_fit(
        run,
        result,
        {"query": query_ref, "passage": passage_ref},
        train_pairs=len(pairs),
        dev_queries=len(dev.queries),
        passages=len(passages.keys),
    )


def draw(candidates: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """Up to `count` distinct items drawn without replacement."""
    if not candidates or count == 0:
        return []
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[i] for i in picked]
