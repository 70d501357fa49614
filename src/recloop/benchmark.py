"""The benchmark record format: every script under ``bench/`` writes results through here.

A results file is JSON with a top-level ``records`` list plus the ``command`` that produced it
and a one-line ``title``; ``docs/benchmarks.md`` is generated from these files by
``bench/make_docs.py`` and never edited by hand.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recloop.errors import ConfigError

PROTOCOL_NAMES = ("loo", "ratio", "temporal", "cold_items", "all")  # all: no split
_BENCHMARK_NAMES = r"ml-100k|ml-1m|synthetic-[A-Za-z0-9_.=,-]+"
_BENCHMARK_DATASET = re.compile(rf"^({_BENCHMARK_NAMES})$")
FILES_PREFIX = "files:"  # a user's own data (run config dataset = "files"): files:<name>
_DATASET = re.compile(rf"^({_BENCHMARK_NAMES}|{FILES_PREFIX}\S+)$")
RESULTS_DIR = Path("bench/results")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_text(payload: Any) -> str:
    """Indented strict JSON for results files: a value that could not be computed (NaN) is
    ``null``, never a bare ``NaN`` token that JSON readers reject."""
    return json.dumps(_finite(payload), indent=2, allow_nan=False) + "\n"


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str
    cores: int
    gpu: str | None = None


class BenchRecord(BaseModel):
    """One measured configuration. Names are fixed so results compare across issues."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        description="ml-100k, ml-1m or synthetic-<parameters>; files:<name> for a user's data"
    )
    protocol: str = Field(description="loo, ratio, temporal, cold_items, or all (no split)")
    seed: int
    model: str = Field(description="the model's class name, e.g. EASE")
    config: dict[str, Any] = Field(default_factory=dict, description="hyper-parameters")
    metrics: dict[str, float] = Field(description="flat map, test set, e.g. ndcg@10")
    valid_metrics: dict[str, float] = Field(default_factory=dict, description="same keys, valid")
    tuning_trials: int = Field(default=0, ge=0)
    train_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = Field(
        default=None, description="peak GPU memory allocated by torch, MiB (GPU runs only)"
    )
    users_per_s: float | None = Field(
        default=None, description="full-ranking inference throughput (top-10, batch 256)"
    )
    machine: Machine
    recloop_version: str
    git_commit: str | None

    @field_validator("metrics", "valid_metrics", mode="before")
    @classmethod
    def _null_is_nan(cls, v: Any) -> Any:
        """A metric written as ``null`` (it could not be computed) reads back as NaN."""
        if isinstance(v, dict):
            return {k: math.nan if x is None else x for k, x in v.items()}
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        if not _DATASET.match(v):
            raise ValueError(
                f"dataset must be ml-100k, ml-1m, synthetic-<parameters> or files:<name>, not {v!r}"
            )
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol_name(cls, v: str) -> str:
        if v not in PROTOCOL_NAMES:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_NAMES)}, not {v!r}")
        return v


class ResultsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    command: str
    description: str = ""
    created: str
    columns: list[str] | None = Field(
        default=None, description="metrics shown in docs/benchmarks.md (all when None)"
    )
    records: list[BenchRecord]

    @field_validator("records")
    @classmethod
    def _benchmark_datasets(cls, records: list[BenchRecord]) -> list[BenchRecord]:
        """Published results compare the benchmark datasets only, never a user's files."""
        for record in records:
            if not _BENCHMARK_DATASET.match(record.dataset):
                raise ValueError(
                    f"benchmark results hold ml-100k, ml-1m or synthetic-<parameters> records, "
                    f"not {record.dataset!r}"
                )
        return records


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The CUDA device in use, if torch is installed and sees one."""
    if "torch" not in sys.modules:
        return None
    torch = sys.modules["torch"]
    try:
        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # pragma: no cover - driver problems must not break a benchmark record
        return None
    return None


def machine_info() -> Machine:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(cpu=cpu_model(), cores=cores or 1, gpu=gpu_name())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024.0 if sys.platform != "darwin" else usage / (1024.0 * 1024.0)


def git_commit() -> str | None:
    """The commit results come from: ``RECLOOP_GIT_COMMIT`` when set (for a copy of the tree
    run on another machine, whose ``.git`` may be stale or absent), else ``git rev-parse``."""
    if os.environ.get("RECLOOP_GIT_COMMIT"):
        return os.environ["RECLOOP_GIT_COMMIT"].strip()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def make_record(
    *,
    dataset: str,
    protocol: str,
    seed: int,
    model: str,
    metrics: dict[str, float],
    config: dict[str, Any] | None = None,
    valid_metrics: dict[str, float] | None = None,
    tuning_trials: int = 0,
    train_seconds: float | None = None,
    peak_rss: float | None = None,
    users_per_s: float | None = None,
) -> BenchRecord:
    """A record with the machine, version and commit filled in."""
    from recloop import __version__

    return BenchRecord(
        dataset=dataset,
        protocol=protocol,
        seed=seed,
        model=model,
        config=config or {},
        metrics={k: float(v) for k, v in metrics.items()},
        valid_metrics={k: float(v) for k, v in (valid_metrics or {}).items()},
        tuning_trials=tuning_trials,
        train_seconds=train_seconds,
        peak_rss_mb=peak_rss if peak_rss is not None else peak_rss_mb(),
        users_per_s=users_per_s,
        machine=machine_info(),
        recloop_version=__version__,
        git_commit=git_commit(),
    )


def write_results(
    name: str,
    records: list[BenchRecord],
    *,
    title: str,
    command: str,
    description: str = "",
    columns: list[str] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write ``results_dir/<name>.json``; ``command`` is how to reproduce it.

    ``columns`` picks the metrics the generated page shows (the JSON keeps them all).
    """
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ConfigError(f"results name must be lowercase letters, digits, '_' or '-': {name!r}")
    payload = ResultsFile(
        title=title,
        command=command,
        description=description,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        columns=columns,
        records=records,
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json_text(payload.model_dump(mode="json")))
    return path


def read_results(path: Path) -> ResultsFile:
    """Load and validate a results file."""
    try:
        return ResultsFile.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not a valid benchmark results file: {exc}") from exc
