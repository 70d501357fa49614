"""One experiment = data → split → fit → evaluate on validation and test → records.

Shared by ``recloop quickstart``, ``recloop train``/``evaluate`` and the benchmark scripts, so
every number is produced the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from recloop.benchmark import BenchRecord, make_record, peak_rss_mb
from recloop.data.filters import Filters
from recloop.data.split import Part, Split, make_split
from recloop.data.types import Dataset
from recloop.errors import ConfigError
from recloop.eval.evaluate import EvalResult, evaluate
from recloop.models.base import Recommender

DatasetName = Literal["ml-100k", "ml-1m", "synthetic", "files"]


class DataConfig(BaseModel):
    """Which data, which filters and which split protocol."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: DatasetName = "ml-100k"
    path: Path | None = Field(default=None, description="file or folder when dataset='files'")
    protocol: Literal["loo", "ratio", "temporal", "cold_items"] = "ratio"
    filters: Filters = Filters()
    split: dict[str, float | int] = Field(default_factory=dict, description="protocol params")


def load_data(config: DataConfig) -> tuple[Dataset, str]:
    """The dataset and its benchmark name (``ml-100k``, ``ml-1m`` or ``synthetic-…``)."""
    if config.dataset == "ml-100k":
        from recloop.datasets import movielens_100k

        return movielens_100k(), "ml-100k"
    if config.dataset == "ml-1m":
        from recloop.datasets import movielens_1m

        return movielens_1m(), "ml-1m"
    if config.dataset == "synthetic":
        from recloop.data.synthetic import SyntheticConfig, dataset_name, generate

        synthetic = SyntheticConfig()
        return generate(synthetic).dataset, dataset_name(synthetic)
    if config.path is None:
        raise ConfigError("data.path is required when data.dataset = 'files'")
    from recloop.data.loaders import load_dataset

    dataset = load_dataset(config.path)
    return dataset, dataset.name


def split_data(dataset: Dataset, config: DataConfig, seed: int) -> Split:
    return make_split(
        dataset.interactions, config.protocol, seed=seed, filters=config.filters, **config.split
    )


class _Spinner:
    """A transient spinner with elapsed time for steps that report no progress of their own."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            transient=True, disable=not enabled,
        )  # fmt: skip
        self._label = label

    def __enter__(self) -> None:
        self._progress.start()
        self._progress.add_task(self._label, total=None)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


@dataclass(eq=False)
class ModelRun:
    """A fitted model with its validation and test results."""

    model: Recommender
    train_seconds: float
    valid: EvalResult
    test: EvalResult
    peak_rss_mb: float

    def record(self, dataset: str, split: Split, tuning_trials: int = 0) -> BenchRecord:
        return make_record(
            dataset=dataset,
            protocol=split.protocol,
            seed=split.seed,
            model=self.model.name,
            config=self.model.config.model_dump(mode="json"),
            metrics={**self.test.metrics, **self.test.beyond},
            valid_metrics={**self.valid.metrics, **self.valid.beyond},
            tuning_trials=tuning_trials,
            train_seconds=self.train_seconds,
            peak_rss=self.peak_rss_mb,
        )


def fit_and_evaluate(
    model: Recommender,
    split: Split,
    dataset: Dataset,
    ks: tuple[int, ...] = (10, 20),
    *,
    progress: bool = True,
    evaluate_test: bool = True,
) -> ModelRun:
    """Fit on ``split.train``; evaluate on validation and (unless told not to) test."""
    start = time.perf_counter()
    with _Spinner(f"fitting {model.name}", enabled=progress):
        model.fit(split, catalog=dataset.catalog, users=dataset.users)
    train_seconds = time.perf_counter() - start
    valid = evaluate_part(model, split, dataset, "valid", ks, progress=progress)
    test = (
        evaluate_part(model, split, dataset, "test", ks, progress=progress)
        if evaluate_test
        else valid
    )
    return ModelRun(model, train_seconds, valid, test, peak_rss_mb())


def evaluate_part(
    model: Recommender,
    split: Split,
    dataset: Dataset,
    part: Part,
    ks: tuple[int, ...] = (10, 20),
    *,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a fitted model on one part of ``split`` with every breakdown enabled."""
    return evaluate(
        model,
        split.evaluation_set(part),
        ks,
        train=split.train,
        catalog=dataset.catalog,
        users=dataset.users,
        progress=progress,
    )
