"""The feedback loop end to end (`make loop`): serve, log clicks, retrain, roll out to half the users, compare.

1. A fresh local stack serves the demo models (a copy of `artifacts/serving`, so the demo's repository is
   left alone) with the demo catalog indexed, and a feedback log of its own.
2. Collect: simulated readers (`benchmarks.readers`: the demo log's users, clicking with the generator's
   true probabilities) ask for `k` fresh recommendations with their history, click, and the gateway logs
   each impression and its clicks (LogFeedback).
3. Retrain: the served NRMS fine-tuned on the demo's train split plus the logged impressions (dev: the
   demo's dev split); one epoch from scratch scores near chance (dev AUC 0.49 measured), the demo's 3
   epochs would not fit the loop's ~10 minutes.
4. Roll out: the new checkpoint is exported as the next Triton version of the NRMS encoders, its news
   vectors built and checked by `server.rollout` (rolled out, then back, so the new collection exists and
   is kept current while version 1 stays the control), and the gateway restarted with
   `rollout: {candidate: V, fraction}`: users are split by a stable hash of their id.
5. Compare: readers visit again; click-through rate (clicks per shown item) per arm, with 95% intervals
   from a bootstrap over readers, whatever the result is -> `artifacts/reports/loop.json` and `loop.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import contract
from benchmarks.readers import ArmTally, Readers
from benchmarks.suite import wait_for_cache_warm
from contract import layout
from contract.channel import ClientSecurity
from devstack.local import LocalStack, StackConfig
from export.catalog import index_catalog
from export.models import export_all
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc
from server.config import MilvusSettings, RolloutSettings, Settings, TritonSettings
from server.rollout import Rollout, TritonNewsEncoders
from training.__main__ import CONFIGS
from training.config import load_run_config
from training.data.build import DatasetPaths
from training.data.feedback import load_feedback_log
from training.data.mind import BEHAVIORS_FILE, NEWS_FILE, load_mind_split, write_behaviors, write_news
from training.data.mind_builder import simulate_mind
from training.data.mind_sim import MindSimConfig, SimulatedLog
from training.data.news_corpus import load_source_articles
from training.train_nrms import train_nrms

LOOP = layout.ARTIFACTS / "loop"
REPORT = layout.REPORTS / "loop.json"


@dataclass(frozen=True)
class LoopConfig:
    """The loop's knobs (`python -m benchmarks.loop --help`)."""

    collect_readers: int = 1500
    compare_readers: int = 3000
    k: int = 10
    fraction: float = 0.5
    epochs: int = 1
    concurrency: int = 8
    seed: int = 0


def demo_log(data: DatasetPaths) -> SimulatedLog:
    """The simulated log behind the demo's MIND-format set, rebuilt from its manifest (same seed, same log)."""
    spec = json.loads((data.mind / "manifest.json").read_text())["spec"]
    articles = load_source_articles(spec["max_articles"])
    return simulate_mind(articles, MindSimConfig(**spec["mind"]), spec["seed"])[1]


def history_request(readers: Readers, user_id: str, k: int) -> pb.RecommendRequest:
    """What a reader's homepage asks for: `k` articles fresh enough to be shown, ranked for their history."""
    fresh = calendar.timegm(readers.fresh_after.timetuple())
    return pb.RecommendRequest(
        user_id=user_id,
        history=[pb.HistoryItem(id=item) for item in readers.histories[user_id]],
        k=k,
        filters=pb.Filters(published_after={"seconds": fresh}),
    )


async def visit(
    target: str, readers: Readers, users: Sequence[str], cfg: LoopConfig, rng: np.random.Generator
) -> ArmTally:
    """Each of `users` asks for recommendations once, clicks by the latent truth, and the clicks are logged."""
    tally, queue = ArmTally(), list(users)
    shown_at = {"seconds": calendar.timegm(readers.now.timetuple())}
    async with ClientSecurity().aio_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def reader() -> None:
            while queue:
                user = queue.pop()
                answer = await stub.Recommend(history_request(readers, user, cfg.k), timeout=30)
                shown = [item.id for item in answer.items]
                clicked = readers.clicks(user, shown, rng)
                if answer.impression_id:
                    event = pb.FeedbackEvent(impression_id=answer.impression_id, clicked_item_ids=clicked)
                    event.shown_at.FromSeconds(shown_at["seconds"])
                    await stub.LogFeedback(pb.LogFeedbackRequest(events=[event]), timeout=30)
                tally.add(answer.model_version or "control", user, len(shown), len(clicked))

        await asyncio.gather(*(reader() for _ in range(cfg.concurrency)))
    return tally


def training_set(demo: DatasetPaths, log_dir: Path, out: Path) -> Path:
    """The demo's train split plus every logged impression (train), the demo's dev split (dev)."""
    train, logged = load_mind_split(demo.mind_train), load_feedback_log(log_dir)
    news = {**logged.news, **train.news}
    (out / "train").mkdir(parents=True, exist_ok=True)
    write_news(out / "train" / NEWS_FILE, news.values())
    write_behaviors(out / "train" / BEHAVIORS_FILE, [*train.impressions, *logged.impressions])
    shutil.copytree(demo.mind_dev, out / "dev", dirs_exist_ok=True)
    return out


def retrain(data_dir: Path, cfg: LoopConfig, checkpoints: Path) -> tuple[Path, dict[str, float]]:
    """The served NRMS fine-tuned on `data_dir` for `cfg.epochs`; its checkpoint and dev metrics."""
    overrides = [
        f"data_dir={data_dir}",
        "name=nrms_loop",
        f"train.epochs={cfg.epochs}",
        f"init_checkpoint={layout.checkpoint_file(layout.NRMS_RUN)}",  # fine-tune the served model
        "ranker_holdout=0",  # the A/B keeps the served ranking weights; NRMS trains on all of it
    ]
    checkpoint = train_nrms(load_run_config(CONFIGS / "nrms.yaml", "nrms", overrides))
    path = checkpoint.save(checkpoints / "nrms_loop.pt")
    return path, dict(checkpoint.best_metrics)


def stack_settings(stack: LocalStack, serving: layout.ServingLayout, base_version: int) -> Settings:
    """The gateway's settings for this stack, as the rollout command reads them."""
    return Settings(
        triton=TritonSettings(url=stack.triton.grpc_url, tokenizer_dir=serving.tokenizers),
        milvus=MilvusSettings(uri=stack.milvus.uri),
        rollout=RolloutSettings(base_version=base_version),
    )


def newest_version(serving: layout.ServingLayout, model: str) -> int:
    return max(int(p.name) for p in (serving.repository("cpu") / model).iterdir() if p.name.isdigit())


def run_loop(cfg: LoopConfig, console: Console) -> dict[str, Any]:
    demo = DatasetPaths(layout.DATA)
    shutil.rmtree(LOOP, ignore_errors=True)
    serving = layout.ServingLayout(LOOP / "serving")
    shutil.copytree(layout.SERVING.repository("cpu"), serving.repository("cpu"))
    shutil.copytree(layout.SERVING.tokenizers, serving.tokenizers)
    base = newest_version(serving, contract.NEWS_ENCODER)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        console.print(f"[bold]{name}[/] done in {timings[name]} s")

    rng = np.random.default_rng(cfg.seed)
    readers = Readers.at_log_end(demo_log(demo))
    users = list(rng.permutation(readers.user_ids()))
    lap("readers")
    log_dir = LOOP / "feedback"
    config = StackConfig(
        triton_repo=serving.repository("cpu"),
        tokenizer_dir=serving.tokenizers,
        state_dir=LOOP / "stack",
        gateway_port=0,
        metrics_port=0,
        llm=False,
        gateway_env={"RECSTACK_FEEDBACK__LOG_DIR": str(log_dir), "RECSTACK_ROLLOUT__BASE_VERSION": str(base)},
    )
    with LocalStack(config) as stack:
        index_catalog(stack.gateway_address, demo.root)
        wait_for_cache_warm(stack.metrics_url)
        lap("stack")
        collected = asyncio.run(visit(stack.gateway_address, readers, users[: cfg.collect_readers], cfg, rng))
        logged = len(load_feedback_log(log_dir).impressions)
        lap("collect")
        checkpoint, dev = retrain(training_set(demo, log_dir, LOOP / "data"), cfg, LOOP / "checkpoints")
        lap("retrain")
        versions = export_all(checkpoint, layout.checkpoint_file(layout.TWO_TOWER_RUN), serving, LOOP / "export.json")
        candidate = versions["versions"][contract.NEWS_ENCODER]
        settings = stack_settings(stack, serving, base)
        rollout = Rollout(settings, TritonNewsEncoders(settings))
        try:
            check = rollout.roll_out(candidate)  # builds news_v<candidate>, checks it, serves it ...
            rollout.roll_back()  # ... and back: the A/B below serves it to a fraction of users only
        finally:
            rollout.close()
        ab = {"RECSTACK_ROLLOUT__CANDIDATE": str(candidate), "RECSTACK_ROLLOUT__FRACTION": str(cfg.fraction)}
        stack.gateway.stop()
        stack.config = replace(stack.config, gateway_env={**stack.config.gateway_env, **ab})
        stack.start_gateway()
        wait_for_cache_warm(stack.metrics_url)
        lap("rollout")
        compared = asyncio.run(visit(stack.gateway_address, readers, users[: cfg.compare_readers], cfg, rng))
        lap("compare")
    arms = compared.summary(rng)
    return {
        "config": asdict(cfg),
        "base_version": base,
        "candidate_version": candidate,
        "collect": collected.summary(rng),
        "logged_impressions": logged,
        "retrained_dev": dev,
        "rollout_check": asdict(check),
        "arms": arms,
        "ctr_lift": compared.lift(str(base), str(candidate), rng),
        "seconds": timings,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    names = sorted(arms)
    ctr = [arms[n]["ctr"] for n in names]
    errors = np.array(
        [[arms[n]["ctr"] - arms[n]["ctr_ci95"][0], arms[n]["ctr_ci95"][1] - arms[n]["ctr"]] for n in names]
    )
    labels = [f"v{n} ({'control' if n == str(report['base_version']) else 'retrained'})" for n in names]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.bar(labels, ctr, yerr=errors.T, capsize=6, color=["#8c8c8c", "#3b75af"][: len(names)])
    axis.set_ylabel("clicks per shown item (95% CI)")
    axis.set_title("Feedback loop: CTR per arm")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = LoopConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--collect-readers",
        type=int,
        default=defaults.collect_readers,
        help="readers served and logged before retraining (%(default)s)",
    )
    parser.add_argument(
        "--compare-readers",
        type=int,
        default=defaults.compare_readers,
        help="readers in the A/B comparison (%(default)s)",
    )
    parser.add_argument("--k", type=int, default=defaults.k, help="articles per recommendation (%(default)s)")
    parser.add_argument(
        "--fraction",
        type=float,
        default=defaults.fraction,
        help="share of users served the retrained version (%(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="NRMS retraining epochs (%(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="readers' order and clicks (%(default)s)")
    parser.add_argument("--out", type=Path, default=REPORT, help="report JSON; the PNG goes beside it (%(default)s)")
    args = parser.parse_args(argv)
    cfg = LoopConfig(args.collect_readers, args.compare_readers, args.k, args.fraction, args.epochs, seed=args.seed)
    console = Console()
    report = run_loop(cfg, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    console.print_json(data={"arms": report["arms"], "ctr_lift": report["ctr_lift"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
