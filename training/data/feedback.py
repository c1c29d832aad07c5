"""The gateway's feedback log as MIND training data.

The gateway writes one MIND split folder per UTC day, `<log_dir>/YYYY-MM-DD/{behaviors.tsv,news.tsv}`
(server/feedback.py; each day loads with `load_mind_split` as it is), each gateway worker under its own
`<log_dir>/worker-<i>/`. NRMS training reads
`data_dir/train` and `data_dir/dev`, so a log is split here by time, as MIND's own dev week follows
its train weeks: the latest `dev_fraction` of the impressions (by their time) are dev, the others
train. Both splits get the whole logged catalog (every id any day's news.tsv names).

`load_mind(data_dir)` (training/train_nrms.py) applies this split itself when `data_dir` is a
feedback log, so `python -m training train --nrms data_dir=<log dir>` trains on it directly;
`write_feedback_dataset` writes the same split as ordinary MIND folders (e.g. to inspect or keep it).
"""

from __future__ import annotations

import re
from pathlib import Path

from training.data.mind import BEHAVIORS_FILE, NEWS_FILE, load_behaviors, load_news, write_behaviors, write_news
from training.data.types import MindSplit, NewsArticle

DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
DEV_FRACTION = 0.2


def feedback_days(log_dir: str | Path) -> list[Path]:
    """The log's day folders that hold impressions, oldest first: `<log_dir>/YYYY-MM-DD/`, and with gateway
    workers `<log_dir>/worker-<i>/YYYY-MM-DD/` (each worker writes its own)."""
    days = [*Path(log_dir).glob(f"*/{BEHAVIORS_FILE}"), *Path(log_dir).glob(f"worker-*/*/{BEHAVIORS_FILE}")]
    return sorted((path.parent for path in days if DAY_FOLDER.fullmatch(path.parent.name)), key=lambda day: day.name)


def is_feedback_log(directory: str | Path) -> bool:
    """True for a folder of day folders as the gateway writes them (and not MIND's train/dev layout)."""
    directory = Path(directory)
    return directory.is_dir() and not (directory / "train").exists() and bool(feedback_days(directory))


def load_feedback_log(log_dir: str | Path) -> MindSplit:
    """Every day of the log as one split: the union of the days' news, their impressions in time order."""
    news: dict[str, NewsArticle] = {}
    days = feedback_days(log_dir)
    for day in days:
        news.update(load_news(day / NEWS_FILE))
    impressions = [imp for day in days for imp in load_behaviors(day / BEHAVIORS_FILE, known_news=news)]
    impressions.sort(key=lambda imp: imp.time)
    return MindSplit(news=news, impressions=impressions)


def split_feedback_log(log_dir: str | Path, dev_fraction: float = DEV_FRACTION) -> tuple[MindSplit, MindSplit]:
    """(train, dev): the latest `dev_fraction` of the impressions are dev; each split needs at least one."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be within (0, 1), got {dev_fraction}")
    logged = load_feedback_log(log_dir)
    count = len(logged.impressions)
    if count < 2:
        raise ValueError(f"{log_dir}: a train/dev split needs at least 2 impressions, the log has {count}")
    cut = min(count - 1, max(1, round(count * (1 - dev_fraction))))
    return (
        MindSplit(news=logged.news, impressions=logged.impressions[:cut]),
        MindSplit(news=logged.news, impressions=logged.impressions[cut:]),
    )


def write_feedback_dataset(log_dir: str | Path, out_dir: str | Path, dev_fraction: float = DEV_FRACTION) -> Path:
    """Write the log's split as `out_dir/train` and `out_dir/dev` MIND folders; returns `out_dir`."""
    out_dir = Path(out_dir)
    for name, split in zip(("train", "dev"), split_feedback_log(log_dir, dev_fraction), strict=True):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        write_news(out_dir / name / NEWS_FILE, split.news.values())
        write_behaviors(out_dir / name / BEHAVIORS_FILE, split.impressions)
    return out_dir
