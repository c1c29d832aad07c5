"""Train NRMS MIND-style and score impressions with it.

A clicked candidate becomes one sample with K negatives drawn from the same impression's
non-clicked candidates (with replacement when it has fewer than K), and the loss is cross-entropy
over the K + 1 click logits. Every epoch redraws the negatives and, when `positives_per_impression`
is set, which clicks of an impression are used (bounding an epoch's cost on 2 CPU cores). A user's history is their
most recent `max_history` clicks; an empty history trains the learned cold-start user vector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoint import Checkpoint
from training.config import NRMSRunConfig
from training.data.feedback import is_feedback_log, split_feedback_log
from training.data.mind import load_mind_split
from training.data.types import Impression, MindSplit
from training.loop import fit, seed_everything
from training.metrics import mind_metrics
from training.models.nrms import NRMS
from training.text import TokenTable, encode_table, minilm_ref, pretrained_word_embeddings, text_tokenizer

log = logging.getLogger(__name__)

ENCODE_BATCH = 512


@dataclass(frozen=True)
class Sample:
    history: tuple[int, ...]  # title rows, oldest first
    candidates: tuple[int, ...]  # the clicked one first, then K negatives


def history_rows(impression: Impression, index: dict[str, int], max_history: int) -> tuple[int, ...]:
    """The impression's most recent `max_history` clicks that the title table knows."""
    return tuple(index[n] for n in impression.history if n in index)[-max_history:]


def draw_samples(
    impressions: Sequence[Impression],
    index: dict[str, int],
    negatives: int,
    max_history: int,
    positives: int | None,
    rng: np.random.Generator,
) -> list[Sample]:
    """Samples in impression order: up to `positives` clicks per impression (all when None), each with
    `negatives` non-clicks of the same impression."""
    samples = []
    for impression in impressions:
        clicked, skipped = split_candidates(impression, index)
        if not clicked or not skipped:
            continue
        history = history_rows(impression, index, max_history)
        if positives is not None and len(clicked) > positives:
            clicked = rng.choice(clicked, size=positives, replace=False).tolist()
        for positive in clicked:
            drawn = rng.choice(skipped, size=negatives, replace=len(skipped) < negatives)
            samples.append(Sample(history, (positive, *drawn.tolist())))
    return samples


def split_candidates(impression: Impression, index: dict[str, int]) -> tuple[list[int], list[int]]:
    """(clicked, not clicked) candidate rows of a labelled impression."""
    pairs = list(zip(impression.candidates, impression.labels or (), strict=False))
    return [index[c] for c, y in pairs if y == 1], [index[c] for c, y in pairs if y == 0]


def sample_count(impressions: Sequence[Impression], positives: int | None) -> int:
    """How many samples `draw_samples` makes."""
    counts = [sum(imp.labels) for imp in impressions if imp.labels and 0 < sum(imp.labels) < len(imp.labels)]
    return sum(counts) if positives is None else sum(min(c, positives) for c in counts)


def time_bucketed_batches(count: int, batch_size: int, rng: np.random.Generator) -> list[range]:
    """Consecutive runs of `batch_size` samples (samples are in time order), the runs shuffled.

    Impressions close in time show the same fresh articles, so a batch of neighbours holds far fewer
    distinct titles than a random batch (measured: ~830 vs ~1,120 per 128 samples), and encoding
    titles is most of the cost of a step. Batch order is shuffled every epoch.
    """
    batches = [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(samples: Sequence[Sample], table: TokenTable) -> dict[str, torch.Tensor]:
    """Model inputs for a batch: its distinct titles once, and indexes into them (padding = one past the end)."""
    distinct = sorted({row for s in samples for row in (*s.history, *s.candidates)})
    local = {row: i for i, row in enumerate(distinct)}
    pad = len(distinct)
    width = max(1, max(len(s.history) for s in samples))
    history_index = torch.full((len(samples), width), pad, dtype=torch.long)
    history_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, sample in enumerate(samples):
        history_index[i, : len(sample.history)] = torch.tensor([local[r] for r in sample.history], dtype=torch.long)
        history_mask[i, : len(sample.history)] = 1
    candidate_index = torch.tensor([[local[r] for r in s.candidates] for s in samples], dtype=torch.long)
    title_ids, title_mask = table.rows(distinct)
    return {
        "title_ids": title_ids,
        "title_mask": title_mask,
        "history_index": history_index,
        "history_mask": history_mask,
        "candidate_index": candidate_index,
    }


def score_impressions(
    model: NRMS, table: TokenTable, impressions: Sequence[Impression], max_history: int
) -> list[np.ndarray]:
    """NRMS click scores for every candidate of every impression (one array per impression)."""
    index = table.index()
    news = encode_table(model.news_encoder, table)
    histories = sorted({history_rows(imp, index, max_history) for imp in impressions}, key=len)
    users: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(histories), ENCODE_BATCH):
            chunk = histories[start : start + ENCODE_BATCH]
            width = max(1, max(len(h) for h in chunk))
            history = torch.zeros(len(chunk), width, news.shape[1])
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, rows in enumerate(chunk):
                history[i, : len(rows)] = news[list(rows)]
                mask[i, : len(rows)] = 1
            for rows, user in zip(chunk, model.user_encoder(history, mask), strict=True):
                users[rows] = user
    return [
        (news[[index[c] for c in imp.candidates]] @ users[history_rows(imp, index, max_history)]).numpy()
        for imp in impressions
    ]


def load_mind(data_dir: Path) -> tuple[MindSplit, MindSplit]:
    """`data_dir`'s train and dev folders; a gateway feedback log is split by time instead."""
    if is_feedback_log(data_dir):
        return split_feedback_log(data_dir)
    return load_mind_split(Path(data_dir) / "train"), load_mind_split(Path(data_dir) / "dev")


def evaluable(impressions: Sequence[Impression], limit: int | None = None) -> list[Impression]:
    """Impressions that MIND's metrics can score (labelled, with a click and a non-click), first `limit`."""
    kept = [imp for imp in impressions if imp.labels and 0 < sum(imp.labels) < len(imp.labels)]
    if len(kept) < len(impressions):
        log.info("evaluating %d of %d impressions (others unlabelled or single-class)", len(kept), len(impressions))
    return kept[:limit] if limit else kept


def split_for_ranker(train: Sequence[Impression], holdout: float) -> tuple[list[Impression], list[Impression]]:
    """Labelled train impressions in time order, split into (NRMS's part, the latest `holdout` fraction).

    The ranker on top of NRMS must be fitted on impressions NRMS never trained on: on its own training
    impressions NRMS scores far better than on new ones (measured: AUC 0.73 vs 0.59), so a fit there
    over-trusts the content score.
    """
    ordered = sorted((imp for imp in train if imp.labels is not None), key=lambda i: i.time)
    cut = len(ordered) - round(len(ordered) * holdout)
    return ordered[:cut], ordered[cut:]


def train_nrms(run: NRMSRunConfig) -> Checkpoint:
    """Train on `run.data_dir`/train, early-stop on `run.metric` over `run.data_dir`/dev."""
    seed_everything(run.train.seed)
    train, dev = load_mind(run.data_dir)
    tokenizer_ref = minilm_ref(run.model.max_title_tokens)
    news = {**train.news, **dev.news}
    table = TokenTable.build({n: article.title for n, article in news.items()}, text_tokenizer(tokenizer_ref))
    index = table.index()
    pretrained = pretrained_word_embeddings() if run.model.pretrained_embeddings else None
    model = NRMS(run.model, pretrained)
    if run.init_checkpoint is not None:
        model.load_state_dict(Checkpoint.load(run.init_checkpoint).state_dict)  # same model config, or it raises
    dev_impressions = evaluable(dev.impressions, run.train.max_dev)
    train_impressions, _ = split_for_ranker(train.impressions, run.ranker_holdout)
    steps = -(-sample_count(train_impressions, run.positives_per_impression) // run.train.batch_size)

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([run.train.seed, epoch])
        samples = draw_samples(
            train_impressions, index, run.negatives, run.model.max_history, run.positives_per_impression, rng
        )
        for batch in time_bucketed_batches(len(samples), run.train.batch_size, rng):
            yield collate([samples[i] for i in batch], table)

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**batch)
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))

    def evaluate() -> dict[str, float]:
        scores = score_impressions(model, table, dev_impressions, run.model.max_history)
        return mind_metrics([imp.labels for imp in dev_impressions], scores)

    result = fit(
        model,
        epoch_batches=epoch_batches,
        steps_per_epoch=steps,
        loss_fn=loss_fn,
        evaluate=evaluate,
        config=run.train,
        metric=run.metric,
        label=run.name,
    )
    return Checkpoint.from_fit(
        run,
        result,
        {"title": tokenizer_ref},
        train_impressions=len(train_impressions),
        dev_impressions=len(dev_impressions),
    )
