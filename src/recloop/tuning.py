"""Hyper-parameter search on seed 0's validation split (Optuna TPE), every trial recorded.

The test split is never touched here: the best configuration is written as a run config and
evaluated once on test by ``recloop evaluate`` or a benchmark script.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recloop.data.split import Split
from recloop.data.types import Dataset
from recloop.errors import ConfigError, RecloopError
from recloop.experiment import fit_and_evaluate
from recloop.models.registry import build_model
from recloop.runconfig import read_toml


class Param(BaseModel):
    """One searched hyper-parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs non-empty 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("a numeric parameter needs low <= high")
        elif self.step is not None and self.step <= 0:
            raise ValueError(f"'step' must be more than 0, not {self.step:g}")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, not {self.low:g}")
        elif self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError("a log-scale parameter takes no 'step'")
        return self


class SearchSpace(BaseModel):
    """A declared search space: the model, the searched parameters and fixed ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    params: dict[str, Param]
    fixed: dict[str, Any] = Field(default_factory=dict)


def load_space(path: Path) -> SearchSpace:
    """Read and validate a search space; errors name the file and the field."""
    from recloop.models.registry import model_class

    raw = read_toml(path)
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        raise ConfigError(f"{path}: field '{where}': {message}") from None
    try:
        model_class(space.model)
    except ConfigError as exc:
        raise ConfigError(f"{path}: field 'model': {exc}") from None
    return space


def check_metric(metric: str, ks: tuple[int, ...] = (10, 20)) -> None:
    """Fail before any trial runs when the validation run would not compute ``metric``."""
    from recloop.eval.metrics import METRICS

    known = [f"{name}@{k}" for k in ks for name in METRICS]
    if metric not in known:
        raise ConfigError(f"unknown tuning metric {metric!r} (known: {', '.join(known)})")


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    value: float | None
    valid_metrics: dict[str, float]
    seconds: float
    state: str = "complete"
    error: str = ""


@dataclass
class TuneResult:
    model: str
    metric: str
    best_config: dict[str, Any]
    best_value: float
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "metric": self.metric,
            "best_config": self.best_config,
            "best_value": self.best_value,
            "trials": [t.__dict__ for t in self.trials],
        }


def _encoded_choices(param: Param) -> list[Any]:
    """Categorical choices as Optuna accepts them: lists (e.g. layer widths) become JSON text."""
    return [json.dumps(c) if isinstance(c, list) else c for c in param.choices or []]


def _suggest(trial: Any, name: str, param: Param) -> Any:
    if param.type == "categorical":
        value = trial.suggest_categorical(name, _encoded_choices(param))
        listed = any(isinstance(c, list) for c in param.choices or [])
        return json.loads(value) if listed and isinstance(value, str) else value
    assert param.low is not None and param.high is not None
    if param.type == "int":
        step = int(param.step) if param.step else 1
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)


def default_point(space: SearchSpace) -> dict[str, Any] | None:
    """The model's default values of the searched parameters, if they lie inside the space."""
    from recloop.models.registry import model_class

    fields = model_class(space.model).config_class.model_fields
    point: dict[str, Any] = {}
    for name, param in space.params.items():
        if name not in fields or fields[name].is_required():
            return None
        value = fields[name].default
        if param.type == "categorical":
            if isinstance(value, tuple):
                value = list(value)
            if value not in (param.choices or []):
                return None
            if isinstance(value, list):
                value = json.dumps(value)  # as _suggest encodes it
        else:
            assert param.low is not None and param.high is not None  # checked by Param
            if not param.low <= value <= param.high:
                return None
        point[name] = value
    return point


def tune(
    space: SearchSpace,
    split: Split,
    dataset: Dataset,
    *,
    n_trials: int,
    metric: str = "ndcg@10",
    ks: tuple[int, ...] = (10, 20),
    seed: int = 0,
    timeout: float | None = None,
    on_trial: Any = None,
) -> TuneResult:
    """Search ``space`` maximising ``metric`` on ``split``'s validation set.

    ``split`` must be seed 0's split; test metrics are never computed. A trial whose config
    fails (e.g. a model that would not fit in memory) is recorded as failed, not fatal.
    """
    import optuna

    if split.seed != 0:
        raise ConfigError("tune on seed 0's validation split (the protocol fixes this)")
    check_metric(metric, ks)
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout must be more than 0 seconds, not {timeout:g}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, p) for name, p in space.params.items()}
        config = {**space.fixed, **params}
        start = time.perf_counter()
        try:
            model = build_model(space.model, config)
            run = fit_and_evaluate(model, split, dataset, ks, progress=False, evaluate_test=False)
        except RecloopError as exc:
            trials.append(Trial(trial.number, params, None, {}, 0.0, "failed", str(exc)))
            raise optuna.TrialPruned(str(exc)) from None
        valid = {**run.valid.metrics}
        value = float(valid[metric])
        trials.append(Trial(trial.number, params, value, valid, time.perf_counter() - start))
        if on_trial is not None:
            on_trial(trials[-1])
        return value

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    defaults = default_point(space)
    if defaults is not None:
        study.enqueue_trial(defaults)  # the model's defaults are always the first trial
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    done = [t for t in trials if t.state == "complete"]
    if not trials:
        raise RecloopError("no trial ran (a longer timeout lets one finish)")
    if not done:
        raise RecloopError(f"every trial failed; first error: {trials[0].error}")
    best = max(done, key=lambda t: t.value if t.value is not None else float("-inf"))
    assert best.value is not None
    return TuneResult(space.model, metric, {**space.fixed, **best.params}, best.value, trials)


def write_trials(path: Path, result: TuneResult, extra: dict[str, Any]) -> None:
    """Every trial as JSON; a metric that could not be computed (NaN) is ``null``."""
    from recloop.benchmark import json_text

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text({**extra, **result.to_dict()}))
