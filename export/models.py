"""`make export`: checkpoints -> four verified ONNX graphs -> Triton repositories + tokenizer files + report.

Outputs under `artifacts/serving/`:
- `onnx/<model>.onnx`: the graphs (parity-checked against PyTorch, see `export.onnx_export`);
- `triton-cpu/` and `triton-gpu/`: model repositories in the two profiles (`export.triton_repo`);
  a graph identical to the newest served version is not written again, so re-running is a no-op,
  and a changed graph lands as a new version next to the old one;
- `tokenizers/{title,query,passage}.json`: the tokenizer definitions the gateway encodes with;
- `artifacts/reports/export.json`: per model, max |ONNX - PyTorch|, opset, inputs and outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import contract
from contract import layout
from contract.layout import ServingLayout, tokenizer_file
from contract.ranking import RankingWeights
from export.onnx_export import (
    ExportResult,
    ExportTarget,
    export_and_verify,
    history_parity_inputs,
    text_parity_inputs,
)
from export.triton_repo import Profile, TritonOptions, next_version, write_repository
from training.checkpoint import RANKING_KEY, Checkpoint
from training.data.mind import load_news
from training.data.msmarco import load_collection, load_queries
from training.text import TokenizerRef, text_tokenizer, write_tokenizer_file

PARITY_TEXTS = 16


def export_targets(nrms: Checkpoint, two_tower: Checkpoint) -> list[ExportTarget]:
    """The four encoders with parity inputs built from real titles, queries and passages."""
    news_model, tower_model = nrms.build_model(), two_tower.build_model()
    title_ref = nrms.tokenizers["title"]
    query_ref, passage_ref = two_tower.tokenizers["query"], two_tower.tokenizers["passage"]
    titles = sample_texts([a.title for a in load_news(Path(nrms.run.data_dir) / "train" / "news.tsv").values()])
    data_dir = Path(two_tower.run.data_dir)
    queries = sample_texts(list(load_queries(data_dir / "queries.dev.tsv").values()))
    passages = sample_texts(list(load_collection(data_dir / "collection.tsv").values()))
    title_inputs = text_parity_inputs(text_tokenizer(title_ref), titles, title_ref.max_length)
    with torch.no_grad():
        news_vectors = news_model.news_encoder(
            *(
                torch.from_numpy(title_inputs["real_batch"][name])
                for name in (contract.INPUT_IDS, contract.ATTENTION_MASK)
            )
        ).numpy()
    news_dim, tower_dim = nrms.run.model.news_dim, two_tower.run.model.word_dim
    return [
        ExportTarget(contract.text_model(contract.NEWS_ENCODER, news_dim), news_model.news_encoder, title_inputs),
        ExportTarget(
            contract.user_model(contract.USER_ENCODER, news_dim),
            news_model.user_encoder,
            history_parity_inputs(news_vectors, nrms.run.model.max_history),
        ),
        ExportTarget(
            contract.text_model(contract.QUERY_ENCODER, tower_dim),
            tower_model.query_tower,
            text_parity_inputs(text_tokenizer(query_ref), queries, query_ref.max_length),
        ),
        ExportTarget(
            contract.text_model(contract.DOC_ENCODER, tower_dim),
            tower_model.doc_tower,
            text_parity_inputs(text_tokenizer(passage_ref), passages, passage_ref.max_length),
        ),
    ]


def sample_texts(texts: list[str], count: int = PARITY_TEXTS, seed: int = 0) -> list[str]:
    picked = np.random.default_rng(seed).choice(len(texts), size=min(count, len(texts)), replace=False)
    return [texts[i] for i in sorted(picked)]


def tokenizer_refs(nrms: Checkpoint, two_tower: Checkpoint) -> dict[str, TokenizerRef]:
    return {"title": nrms.tokenizers["title"], **two_tower.tokenizers}


def export_all(
    nrms_path: Path,
    two_tower_path: Path,
    serving: ServingLayout = layout.SERVING,
    report_path: Path = layout.EXPORT_REPORT,
    options: TritonOptions | None = None,
) -> dict:
    """Export, verify, write both repositories and the tokenizer files; returns the export report."""
    nrms, two_tower = Checkpoint.load(nrms_path), Checkpoint.load(two_tower_path)
    results = [export_and_verify(t, serving.onnx / f"{t.spec.name}.onnx") for t in export_targets(nrms, two_tower)]
    versions = {profile: publish(results, serving.repository(profile), profile, options) for profile in layout.PROFILES}
    for field, ref in tokenizer_refs(nrms, two_tower).items():
        write_tokenizer_file(ref, tokenizer_file(serving.tokenizers, field))
    ranking_weights(nrms).to_json(serving.ranking)
    report = {
        "models": {r.spec.name: r.report() for r in results},
        "repositories": {p: str(serving.repository(p)) for p in versions},
        "versions": versions["cpu"],
        "tokenizers": str(serving.tokenizers),
        "ranking": str(serving.ranking),
        "checkpoints": {"nrms": str(nrms_path), "two_tower": str(two_tower_path)},
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def ranking_weights(nrms: Checkpoint) -> RankingWeights:
    """The popularity-aware ranking fitted with `nrms`; content-only weights (the NRMS order) when none was."""
    fitted = nrms.extra.get(RANKING_KEY)
    return RankingWeights(**fitted) if fitted else RankingWeights()


def publish(results: list[ExportResult], repo: Path, profile: Profile, options: TritonOptions | None) -> dict[str, int]:
    """Add each changed graph as a new version; returns model -> the version now newest."""
    changed = [r for r in results if not same_as_newest(repo / r.spec.name, r.path)]
    if changed:
        write_repository(repo, [(r.spec, r.path) for r in changed], profile, options)
    return {r.spec.name: next_version(repo / r.spec.name) - 1 for r in results}


def same_as_newest(model_dir: Path, onnx_path: Path) -> bool:
    newest = next_version(model_dir) - 1 if model_dir.exists() else 0
    served = model_dir / str(newest) / "model.onnx"
    return newest > 0 and served.exists() and _sha256(served) == _sha256(onnx_path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
