"""Search spaces, run-config round trips, and tuning that never reads the test split."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from recloop.data import Dataset, Interactions, make_split
from recloop.errors import ConfigError
from recloop.runconfig import ModelSpec, RunConfig, TuningRecord, load_run_config, to_toml
from recloop.tuning import SearchSpace, default_point, load_space, tune

SPACES = Path(__file__).resolve().parent.parent / "configs" / "spaces"


# Spaces that cannot hold the model's defaults, and why (their searches start elsewhere).
WITHOUT_DEFAULTS = {
    "DiffRec-wide": "weight_decay is searched on a log scale, which cannot hold the default 0",
}


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid_and_include_the_defaults(path: Path) -> None:
    space = load_space(path)
    assert space.model == path.stem.split("-")[0]  # Model.toml or Model-variant.toml
    if path.stem in WITHOUT_DEFAULTS:
        assert default_point(space) is None
    else:
        assert default_point(space) is not None  # tuning starts from the model's defaults


def test_run_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = RunConfig(
        model=ModelSpec(name="EASE", config={"l2": 123.5, "dtype": "float32"}),
        tuning=TuningRecord(trials=3, metric="ndcg@10", best_valid=0.25),
    )
    text = to_toml(config.model_dump(mode="json"), "a header")
    assert RunConfig.model_validate(tomllib.loads(text)) == config
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert load_run_config(path) == config


def test_bad_space_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('model = "EASE"\n[params.l2]\ntype = "float"\nlow = 5.0\nhigh = 1.0\n')
    with pytest.raises(ConfigError, match=r"space\.toml: field 'params\.l2'"):
        load_space(path)


def _tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    data = Interactions.from_arrays(rng.integers(0, 30, 600), rng.integers(0, 40, 600))
    return Dataset("tiny", data)


def test_tune_records_every_trial_and_starts_from_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dataset = _tiny_dataset()
    split = make_split(dataset.interactions, "ratio", seed=0)

    def no_test(*args: object, **kwargs: object) -> None:
        raise AssertionError("tuning must never build the test evaluation set")

    original = type(split).evaluation_set

    def guarded(self, part):  # type: ignore[no-untyped-def]
        if part == "test":
            no_test()
        return original(self, part)

    monkeypatch.setattr(type(split), "evaluation_set", guarded)
    space = SearchSpace.model_validate(
        {"model": "EASE", "params": {"l2": {"type": "float", "low": 1.0, "high": 1000.0}}}
    )
    result = tune(space, split, dataset, n_trials=4)
    assert len(result.trials) == 4
    assert result.trials[0].params == {"l2": 300.0}  # the defaults come first
    assert result.best_value == max(t.value for t in result.trials if t.value is not None)
    with pytest.raises(ConfigError, match="seed 0"):
        tune(space, make_split(dataset.interactions, "ratio", seed=1), dataset, n_trials=1)


def test_list_valued_choices_reach_the_model_as_lists() -> None:
    space = SearchSpace.model_validate(
        {
            "model": "MultDAE",
            "params": {"hidden_dims": {"type": "categorical", "choices": [[600], [32]]}},
            "fixed": {"max_epochs": 1, "latent_dim": 8},
        }
    )
    assert default_point(space) == {"hidden_dims": "[600]"}  # encoded as Optuna stores it
    dataset = _tiny_dataset()
    split = make_split(dataset.interactions, "ratio", seed=0)
    result = tune(space, split, dataset, n_trials=3)
    for trial in result.trials:
        assert trial.params["hidden_dims"] in ([600], [32])
    assert result.best_config["hidden_dims"] in ([600], [32])
