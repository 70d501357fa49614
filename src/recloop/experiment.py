"""One experiment = data → split → fit → evaluate on validation and test → records.

Shared by ``recloop quickstart``, ``recloop train``/``evaluate`` and the benchmark scripts, so
every number is produced the same way.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from recloop.benchmark import FILES_PREFIX, BenchRecord, make_record, peak_rss_mb
from recloop.data import split as splits
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
    path: Path | None = Field(
        default=None, validate_default=True, description="file or folder when dataset='files'"
    )
    protocol: Literal["loo", "ratio", "temporal", "cold_items"] = "ratio"
    filters: Filters = Filters()
    split: dict[str, float | int] = Field(default_factory=dict, description="protocol params")

    @field_validator("path")
    @classmethod
    def _path_with_files(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        dataset = info.data.get("dataset")
        if path is None and dataset == "files":
            raise PydanticCustomError(
                "path_missing", "dataset = 'files' needs path = the file or folder to read"
            )
        if path is not None and dataset != "files":
            raise PydanticCustomError(
                "path_unused",
                "only read when dataset = 'files' (here dataset = '{dataset}'); remove it or "
                "set dataset = 'files'",
                {"dataset": dataset},
            )
        return path

    @field_validator("split")
    @classmethod
    def _split_params(
        cls, params: dict[str, float | int], info: ValidationInfo
    ) -> dict[str, float | int]:
        protocol = info.data.get("protocol")
        if protocol is None:  # the protocol itself was invalid; that error is reported
            return params
        known = split_params(protocol)
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "split_param",
                    "not a parameter of the {protocol} split (it takes {known})",
                    {"protocol": protocol, "known": ", ".join(known) or "no parameters"},
                ),
                loc=(key,),
                input=value,
            )
            for key, value in params.items()
            if key not in known
        ]
        if errors:  # located at data.split.<key>
            raise ValidationError.from_exception_data("DataConfig", errors)
        return params


def split_params(protocol: str) -> tuple[str, ...]:
    """The ``[data.split]`` parameters a protocol's splitter takes (its keyword arguments)."""
    splitter = getattr(splits, protocol)
    names = list(inspect.signature(splitter).parameters)
    return tuple(n for n in names if n not in ("data", "seed"))


def load_data(config: DataConfig) -> tuple[Dataset, str]:
    """The dataset and its benchmark name (``ml-100k``, ``ml-1m``, ``synthetic-…``, or
    ``files:<name>`` for a user's own files)."""
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
    return dataset, FILES_PREFIX + (re.sub(r"\s+", "_", dataset.name.strip()) or "data")


def split_data(dataset: Dataset, config: DataConfig, seed: int) -> Split:
    """Filter and split ``dataset``; a part left empty is an error naming the filters."""
    split = make_split(
        dataset.interactions, config.protocol, seed=seed, filters=config.filters, **config.split
    )
    _check_parts(split, config)
    return split


def _check_parts(split: Split, config: DataConfig) -> None:
    """Refuse a split that leaves nothing to train on or evaluate: its metrics would be NaN."""
    rows_out = split.meta.get("rows_out", len(split.train) + len(split.valid) + len(split.test))
    changed = config.filters.model_dump(exclude_defaults=True)
    filters = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    if rows_out == 0:
        kept = f"data.filters ({filters})" if filters else "the data"
        raise ConfigError(
            f"{kept} leave no interactions of the {split.meta.get('rows_in', 0):,} read; "
            "loosen the filters"
        )
    after = f" (after data.filters {filters})" if filters else ""
    parts = [("train", split.train), ("test", split.test)]
    if config.split.get("valid_share") != 0:  # a validation share of 0 asks for no validation
        parts.insert(1, ("validation", split.valid))
    for name, part in parts:
        if not len(part.positive()):
            raise ConfigError(
                f"the {split.protocol} split (seed {split.seed}) of {rows_out:,} interactions"
                f"{after} leaves no positive {name} interactions; change data.split or loosen "
                "the filters"
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
