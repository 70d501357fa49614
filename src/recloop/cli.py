"""The ``recloop`` command line: quickstart, data inspection, and (later) train/evaluate/serve.

A user mistake (bad file, bad option) prints one line to stderr and exits with code 2; a
traceback always means a bug in recloop.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from recloop.errors import RecloopError, one_line

app = typer.Typer(
    name="recloop",
    help="Generative recommendation with honest benchmarks and a feedback loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and validate data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
sid_app = typer.Typer(help="Build and inspect Semantic IDs of a catalogue.", no_args_is_help=True)
app.add_typer(sid_app, name="semantic-ids")

console = Console(width=None if sys.stdout.isatty() else 120)
P = ParamSpec("P")
R = TypeVar("R")


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`RecloopError`, or a file the command cannot read or write, into one line
    on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RecloopError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or exc.title
            typer.echo(f"error: {exc.title} field '{where}': {err['msg']}", err=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:  # an output path that is a file, a folder, or not writable
            typer.echo(f"error: {os_error_text(exc)}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def os_error_text(exc: OSError) -> str:
    """``<file>: <reason>`` for an :class:`OSError` (``No such file or directory``...)."""
    reason = exc.strerror or one_line(exc)
    names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if isinstance(n, str | bytes)]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def check_writable(path: Path, what: str, *, folder: bool) -> None:
    """Fail before any work when ``path`` cannot be written: a folder (``folder=True``) or a
    file, created with its missing parents. ``what`` names where the path came from."""
    if path.exists():
        if folder and not path.is_dir():
            raise RecloopError(f"{what} {path}: exists and is not a folder")
        if not folder and path.is_dir():
            raise RecloopError(f"{what} {path}: is a folder, not a file")
        if not folder and not os.access(path, os.W_OK):
            raise RecloopError(f"{what} {path}: not writable")
    start = path if folder else path.parent
    for place in (start, *start.parents):  # the nearest folder that exists must take writes
        if place.exists():
            if not place.is_dir():
                raise RecloopError(f"{what} {path}: {place} is not a folder")
            if not os.access(place, os.W_OK | os.X_OK):
                raise RecloopError(f"{what} {path}: {place} is not writable")
            return


@app.command()
def version() -> None:
    """Print the recloop version."""
    from recloop import __version__

    typer.echo(__version__)


@data_app.command("info")
@user_errors
def data_info(
    path: Path = typer.Argument(..., help="a data file, or a folder (RecBole or MovieLens)"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    user: str | None = typer.Option(None, "--user-col", help="user id column (default: inferred)"),
    item: str | None = typer.Option(None, "--item-col", help="item id column (default: inferred)"),
    timestamp: str | None = typer.Option(None, "--time-col", help="timestamp column"),
    value: str | None = typer.Option(None, "--value-col", help="rating or weight column"),
    event: str | None = typer.Option(None, "--event-col", help="event kind column"),
) -> None:
    """Load PATH, validate it, and print what it holds."""
    from recloop.data.loaders import ColumnMap, load_dataset

    given = {"user": user, "item": item, "timestamp": timestamp, "value": value, "event": event}
    named = {k: v for k, v in given.items() if v is not None}
    # the columns not named are still inferred from the header
    dataset = load_dataset(path, ColumnMap(**named) if named else None)
    summary = describe(dataset)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{dataset.name} ({path})", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


def describe(dataset: Any) -> dict[str, Any]:
    """A flat summary of a :class:`~recloop.data.Dataset` for ``recloop data info``."""
    from recloop.data import EventKind

    inter = dataset.interactions
    n = len(inter)
    active_users = int((inter.user_counts() > 0).sum())
    active_items = int((inter.item_counts() > 0).sum())
    kinds = np.bincount(inter.event.astype(np.int64), minlength=len(EventKind))
    summary: dict[str, Any] = {
        "name": dataset.name,
        "interactions": n,
        "users": inter.n_users,
        "items": inter.n_items,
        "users with interactions": active_users,
        "items with interactions": active_items,
        "density": round(n / max(1, active_users * active_items), 6),
        "events": {k.name.lower(): int(kinds[k]) for k in EventKind if kinds[k]},
    }
    if n:
        summary["first timestamp"] = int(inter.timestamp.min())
        summary["last timestamp"] = int(inter.timestamp.max())
        summary["value range"] = [float(inter.value.min()), float(inter.value.max())]
    if dataset.catalog is not None:
        summary["catalog attributes"] = sorted(dataset.catalog.attributes)
    if dataset.users is not None:
        summary["user attributes"] = sorted(dataset.users.attributes)
    return summary


QUICKSTART_MODELS = ("Popular", "ItemKNN", "EASE", "BPR")
# Tuned configs: ./configs when run from a checkout, else the checkout this package lives in.
CONFIGS = next(
    (p for p in (Path("configs"), Path(__file__).resolve().parents[2] / "configs") if p.is_dir()),
    Path("configs"),
)


def tuned_config(dataset: str, protocol: str, model: str) -> dict[str, Any] | None:
    """The tuned hyper-parameters in ``configs/<dataset>/<protocol>/<model>.toml``, if any."""
    from recloop.runconfig import load_run_config

    path = CONFIGS / dataset / protocol / f"{model}.toml"
    if not path.is_file():
        console.print(f"{model}: no tuned config at {path}; using its defaults")
        return None
    console.print(f"{model}: tuned config {path}")
    return dict(load_run_config(path).model.config)


def movielens_or_synthetic(seed: int = 0) -> tuple[Any, str]:
    """MovieLens-100K, or with a notice the synthetic set (an error under ``CI=true``)."""
    from recloop.datasets import movielens_100k
    from recloop.errors import DatasetNotFoundError

    try:
        with console.status("finding MovieLens-100K"):
            return movielens_100k(), "ml-100k"
    except DatasetNotFoundError as exc:
        if on_ci():
            raise DatasetNotFoundError(f"{exc} (CI=true: no synthetic fallback)") from None
        from recloop.data.synthetic import SyntheticConfig, generate
        from recloop.data.synthetic import dataset_name as synthetic_name

        console.print(f"[yellow]notice:[/] {exc}\n[yellow]notice:[/] using synthetic data instead")
        synthetic = SyntheticConfig(seed=seed)
        return generate(synthetic).dataset, synthetic_name(synthetic)


@app.command()
@user_errors
def quickstart(
    out: Path = typer.Option(Path("reports/quickstart"), help="where the results go"),
    seed: int = typer.Option(0, min=0, help="split and model seed"),
    protocol: str = typer.Option("ratio", help="loo, ratio, temporal or cold_items"),
    models: list[str] = typer.Option(
        list(QUICKSTART_MODELS), "--model", "-m", help="model class names (repeatable)"
    ),
    all_models: bool = typer.Option(
        False, "--all", help="every registered model, the neural ones included (slower)"
    ),
) -> None:
    """Train and evaluate the baselines on MovieLens-100K, print a leaderboard, write results.

    ``--all`` adds Mult-VAE, Mult-DAE, DiffRec, SASRec, ContentKNN, SID-SASRec and TIGER
    (tens of minutes on a CPU). Without
    MovieLens (no RECLOOP_DATA, no cache, no download) it says so and uses synthetic
    data instead, except under CI=true, where that is an error.
    """
    from recloop.experiment import DataConfig, fit_and_evaluate, split_data
    from recloop.models.registry import MODELS, build_model, model_class
    from recloop.report import ReportRun, write_report

    if all_models:
        models = list(MODELS)
    for name in models:  # every name and the output folder are checked before any work
        model_class(name)
    config = DataConfig.model_validate({"protocol": protocol})
    check_writable(out, "--out", folder=True)
    started = time.perf_counter()
    dataset, dataset_name = movielens_or_synthetic(seed)
    split = split_data(dataset, config, seed)
    console.print(
        f"[bold]{dataset_name}[/]: {len(dataset.interactions):,} interactions, "
        f"{split.n_users:,} users, {split.n_items:,} items; protocol [bold]{protocol}[/], "
        f"seed {seed}; full ranking, test set"
    )
    runs = []
    for name in models:
        params = tuned_config(dataset_name, protocol, name) or {}
        if "seed" in model_class(name).config_class.model_fields:
            params["seed"] = seed  # the seed sets a model's initialisation too
        model = build_model(name, params)
        runs.append(fit_and_evaluate(model, split, dataset, progress=console.is_terminal))
    table = Table(title=f"Leaderboard — {dataset_name}, {protocol}, seed {seed} (test)")
    columns = ["ndcg@10", "recall@10", "mrr@10", "hit@10", "ndcg@20", "recall@20"]
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    table.add_column("coverage@10", justify="right")
    table.add_column("train s", justify="right")
    for run in sorted(runs, key=lambda r: -r.test.metrics["ndcg@10"]):
        table.add_row(
            run.model.name,
            *(f"{run.test.metrics[c]:.4f}" for c in columns),
            f"{run.test.beyond.get('coverage@10', float('nan')):.3f}",
            f"{run.train_seconds:.2f}",
        )
    console.print(table)
    records = [run.record(dataset_name, split) for run in runs]
    report_runs = [ReportRun.from_model_run(run, seed) for run in runs]
    reference = "EASE" if "EASE" in models else None
    with console.status("writing the report"):
        json_path, html_path = write_report(
            out,
            report_runs,
            dataset=dataset_name,
            splits=split,
            reference=reference,
            users=dataset.users,
            catalog=dataset.catalog,
        )
        write_records(out / "records.json", records)
    console.print(
        f"report: {html_path}\nresults: {json_path}\ndone in {time.perf_counter() - started:.1f} s"
    )


def write_records(path: Path, records: list[Any]) -> None:
    """Benchmark records (the bench/results format) of a CLI run; a metric that could not be
    computed (NaN) is written as ``null``, never as a bare ``NaN`` token."""
    from recloop.benchmark import json_text

    path.write_text(json_text({"records": [r.model_dump(mode="json") for r in records]}))


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "n/a"


def _seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}" / "model"


DEFAULT_DATASET, DEFAULT_PROTOCOL = "ml-100k", "ratio"  # of `train --all` / `evaluate --all`
FIT_INFO = "fit.json"  # next to each seed's model: its training time and peak memory


def _source(config: Path | None, run: Any) -> str:
    """How an error names a run config: its file, or the defaults ``--all`` stood in with."""
    return str(config) if config is not None else f"{run.model.name} (defaults)"


@app.command()
@user_errors
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="run config (TOML)"),
    all_models: bool = typer.Option(
        False, "--all", help="every model, from configs/<dataset>/<protocol>/<Model>.toml"
    ),
    dataset: str | None = typer.Option(
        None, help="with --all: the dataset of the configs", show_default=DEFAULT_DATASET
    ),
    protocol: str | None = typer.Option(
        None, help="with --all: the protocol of the configs", show_default=DEFAULT_PROTOCOL
    ),
) -> None:
    """Fit the configured model(s) on each seed's train split and save them under run.out."""
    from recloop.models.registry import build_model

    runs = run_configs(config, all_models, dataset, protocol)
    for path, run in runs:  # a bad config or output folder fails before any data loads
        build_model(run.model.name, run.model.config)
        check_writable(run.run.out, f"{_source(path, run)}: run.out", folder=True)
        _check_model_folders(run, path)
    for path, run in runs:
        train_run(run, path)


def run_configs(
    config: Path | None, all_models: bool, dataset: str | None, protocol: str | None
) -> list[tuple[Path | None, Any]]:
    """The run configs ``train``/``evaluate`` act on: ``--config``, or with ``--all`` one per
    registered model (its tuned config, or its defaults with a notice when there is none)."""
    from recloop.experiment import DataConfig
    from recloop.models.registry import MODELS
    from recloop.runconfig import ModelSpec, RunConfig, RunSettings, load_run_config

    if (config is None) == (not all_models):
        raise RecloopError("give either --config RUN.toml or --all")
    if config is not None:
        given = [name for name, v in (("--dataset", dataset), ("--protocol", protocol)) if v]
        if given:
            raise RecloopError(
                f"{' and '.join(given)} only apply with --all; {config} names its data in "
                "its [data] table"
            )
        return [(config, load_run_config(config))]
    dataset, protocol = dataset or DEFAULT_DATASET, protocol or DEFAULT_PROTOCOL
    data = DataConfig.model_validate({"dataset": dataset, "protocol": protocol})
    found: list[tuple[Path | None, Any]] = []
    for name in MODELS:
        path = CONFIGS / dataset / protocol / f"{name}.toml"
        if path.is_file():
            found.append((path, load_run_config(path)))
            continue
        console.print(f"{name}: no tuned config at {path}; using its defaults")
        settings = RunSettings(seeds=[0, 1, 2], out=Path("runs") / dataset / protocol / name)
        found.append((None, RunConfig(data=data, model=ModelSpec(name=name), run=settings)))
    return found


def _check_model_folders(run: Any, config: Path | None) -> None:
    """Refuse to replace a saved model of another class: two configs that leave ``run.out``
    at its default would otherwise overwrite each other's models without a word."""
    for seed in run.run.seeds:
        folder = _seed_dir(run.run.out, seed)
        try:
            saved = json.loads((folder / "manifest.json").read_text()).get("model")
        except (OSError, ValueError, AttributeError):
            continue  # nothing (readable) saved there yet
        if saved is not None and saved != run.model.name:
            raise RecloopError(
                f"{folder} holds a saved {saved} model, and {_source(config, run)} trains "
                f"{run.model.name} into the same folder; set run.out to a folder of its own"
            )


def _split(dataset: Any, run: Any, seed: int, config: Path | None) -> Any:
    """Seed ``seed``'s split of a run; a split that leaves a part empty names the config."""
    from recloop.errors import ConfigError
    from recloop.experiment import split_data

    try:
        return split_data(dataset, run.data, seed)
    except ConfigError as exc:
        raise ConfigError(f"{_source(config, run)}: {exc}") from None


def train_run(run: Any, config: Path | None = None) -> None:
    """Fit and save one run config's model on each of its seeds."""
    from recloop.benchmark import peak_rss_mb
    from recloop.experiment import load_data
    from recloop.models.registry import build_model, model_class

    dataset, name = load_data(run.data)
    seeded = "seed" in model_class(run.model.name).config_class.model_fields
    for seed in run.run.seeds:
        split = _split(dataset, run, seed, config)
        # the seed sets a neural model's initialisation too, as in the benchmarks
        params = {**run.model.config, **({"seed": seed} if seeded else {})}
        model = build_model(run.model.name, params)
        start = time.perf_counter()
        with console.status(f"fitting {model.name} on {name}, {run.data.protocol}, seed {seed}"):
            model.fit(split, catalog=dataset.catalog, users=dataset.users)
        seconds = time.perf_counter() - start
        target = _seed_dir(run.run.out, seed)
        model.save(target)
        fit_info = {"train_seconds": seconds, "peak_rss_mb": peak_rss_mb()}
        (target.parent / FIT_INFO).write_text(json.dumps(fit_info) + "\n")
        console.print(f"{model.name} seed {seed}: fitted in {seconds:.1f} s, saved to {target}")


def _fit_info(path: Path, train_hint: str) -> tuple[float, float]:
    """Training seconds and peak memory that ``train`` wrote next to a seed's model."""
    again = f"run `recloop train {train_hint}` again"
    try:
        info = json.loads(path.read_text())
        return float(info["train_seconds"]), float(info["peak_rss_mb"])
    except FileNotFoundError:
        raise RecloopError(f"{path}: missing; {again}") from None
    except KeyError as exc:
        raise RecloopError(f"{path}: no {exc} field; {again}") from None
    except (OSError, ValueError, TypeError) as exc:
        reason = one_line(exc)
        raise RecloopError(f"{path}: damaged ({reason}); {again}") from None


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="run config (TOML)"),
    all_models: bool = typer.Option(
        False, "--all", help="every model trained by `recloop train --all`, in one report"
    ),
    dataset: str | None = typer.Option(
        None, help="with --all: the dataset of the configs", show_default=DEFAULT_DATASET
    ),
    protocol: str | None = typer.Option(
        None, help="with --all: the protocol of the configs", show_default=DEFAULT_PROTOCOL
    ),
) -> None:
    """Evaluate the saved models of a run on validation and test; write results and a report."""
    from recloop.report import ReportRun, write_report

    all_runs: list[tuple[Any, Any]] = []
    records: list[Any] = []
    for path, run in run_configs(config, all_models, dataset, protocol):
        runs, run_records = evaluate_run(run, path)
        all_runs += runs
        records += run_records
    if all_models:
        dataset, protocol = dataset or DEFAULT_DATASET, protocol or DEFAULT_PROTOCOL
        out = Path("runs") / dataset / protocol
        splits = list({split.seed: split for split, _ in all_runs}.values())  # one per seed
        report_runs = [ReportRun.from_model_run(r, split.seed) for split, r in all_runs]
        json_path, html_path = write_report(
            out,
            report_runs,
            dataset=dataset,
            splits=splits,
            reference="EASE" if any(r.model.name == "EASE" for _, r in all_runs) else None,
        )
        write_records(out / "records.json", records)
        console.print(f"all models — report: {html_path}\nresults: {json_path}")


def evaluate_run(run: Any, config: Path | None) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Evaluate one run config's saved models; write its report; return its runs and records."""
    from recloop.experiment import ModelRun, evaluate_part, load_data
    from recloop.models.registry import model_class
    from recloop.report import ReportRun, write_report

    cls = model_class(run.model.name)
    train_hint = f"-c {config}" if config is not None else "--all"
    fitted = {}  # every seed's model folder is checked before any data loads
    for seed in run.run.seeds:
        path = _seed_dir(run.run.out, seed)
        if not (path / "manifest.json").is_file():
            raise RecloopError(f"{path}: no saved model; run `recloop train {train_hint}` first")
        fitted[seed] = _fit_info(path.parent / FIT_INFO, train_hint)
    dataset, name = load_data(run.data)
    records, runs = [], []
    for seed in run.run.seeds:
        split = _split(dataset, run, seed, config)
        path = _seed_dir(run.run.out, seed)
        model = cls.load(path)
        ks, shown = tuple(run.run.ks), console.is_terminal
        valid = evaluate_part(model, split, dataset, "valid", ks, progress=shown)
        test = evaluate_part(model, split, dataset, "test", ks, progress=shown)
        train_seconds, peak_rss = fitted[seed]
        model_run = ModelRun(model, train_seconds, valid, test, peak_rss)
        runs.append((split, model_run))
        trials = run.tuning.trials if run.tuning else 0
        records.append(model_run.record(name, split, tuning_trials=trials))
        console.print(
            f"{model.name} seed {seed}: test ndcg@10 {_metric(test.metrics, 'ndcg@10')}, "
            f"valid ndcg@10 {_metric(valid.metrics, 'ndcg@10')}"
        )
    splits = [split for split, _ in runs]
    report_runs = [ReportRun.from_model_run(r, split.seed) for split, r in runs]
    json_path, html_path = write_report(
        run.run.out,
        report_runs,
        dataset=name,
        splits=splits,
        users=dataset.users,
        catalog=dataset.catalog,
    )
    write_records(run.run.out / "records.json", records)
    console.print(f"report: {html_path}\nresults: {json_path}")
    return runs, records


@app.command()
@user_errors
def tune(
    space: Path = typer.Option(..., "--space", "-s", help="search space (TOML)"),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
    protocol: str = typer.Option("ratio", help="loo, ratio, temporal or cold_items"),
    trials: int = typer.Option(30, min=1, help="number of configurations to try"),
    metric: str = typer.Option("ndcg@10", help="validation metric to maximise"),
    out: Path | None = typer.Option(
        None, help="best run config to write (default configs/<dataset>/<protocol>/<model>.toml)"
    ),
    timeout: float | None = typer.Option(None, help="stop starting trials after this many s"),
    sampler_seed: int = typer.Option(
        0, min=0, help="seed of the TPE sampler (a different seed explores different points)"
    ),
) -> None:
    """Search a declared space on seed 0's validation split; write the best config."""
    from recloop.experiment import DataConfig, load_data, split_data
    from recloop.runconfig import ModelSpec, RunConfig, RunSettings, TuningRecord, write_run_config
    from recloop.tuning import check_metric, load_space, write_trials
    from recloop.tuning import tune as run_tuning

    if timeout is not None and not timeout > 0:
        raise RecloopError(f"--timeout must be more than 0 seconds, not {timeout:g}")
    check_metric(metric)
    search = load_space(space)
    data_config = DataConfig.model_validate({"dataset": dataset, "protocol": protocol})
    if out is not None:  # the outputs are checked before any data loads or trial runs
        check_writable(out, "--out", folder=False)
        check_writable(out.with_suffix(".trials.json"), "--out", folder=False)
    data, name = load_data(data_config)
    split = split_data(data, data_config, seed=0)
    target = out or Path("configs") / name / protocol / f"{search.model}.toml"
    trials_path = target.with_suffix(".trials.json")
    what = "--out" if out is not None else "the tuned config"
    check_writable(target, what, folder=False)
    check_writable(trials_path, what, folder=False)

    def show(trial: Any) -> None:
        console.print(f"trial {trial.number}: {metric} {trial.value:.4f} {trial.params}")

    result = run_tuning(
        search,
        split,
        data,
        n_trials=trials,
        metric=metric,
        timeout=timeout,
        on_trial=show,
        seed=sampler_seed,
    )
    write_trials(
        trials_path,
        result,
        {"dataset": name, "protocol": protocol, "seed": 0, "split": "validation"},
    )
    config = RunConfig(
        data=data_config,
        model=ModelSpec(name=search.model, config=result.best_config),
        run=RunSettings(seeds=[0, 1, 2], out=Path("runs") / name / protocol / search.model),
        tuning=TuningRecord(
            trials=len(result.trials),
            metric=metric,
            best_valid=result.best_value,
            space=str(space),
            trials_file=str(trials_path),
        ),
    )
    header = (
        f"Written by `recloop tune --space {space} --dataset {dataset} --protocol {protocol} "
        f"--trials {trials}"
        + (f" --timeout {timeout:g}" if timeout is not None else "")
        + (f" --sampler-seed {sampler_seed}" if sampler_seed else "")
        + f"`.\nBest {metric} on seed 0's validation split: "
        f"{result.best_value:.4f} after {len(result.trials)} trials."
    )
    write_run_config(target, config, header)
    console.print(f"best {metric} {result.best_value:.4f}: {result.best_config} → {target}")


# ---------------------------------------------------------------------------- semantic-ids
SID_DATASETS = ("ml-100k", "ml-1m", "synthetic")
SID_TOKENIZERS = ("rqvae", "rkmeans")
SID_REPORT = "report.json"
SID_COLUMNS = (  # level_report key, table header, format
    ("utilisation", "utilisation", ".3f"),
    ("perplexity", "perplexity", ".1f"),
    ("reconstruction_mse", "recon. MSE", ".3g"),
    ("collision_rate", "collision rate", ".3f"),
    ("coherence_prefix_jaccard", "prefix Jaccard", ".4f"),
    ("coherence_random_jaccard", "random Jaccard", ".4f"),
    ("coherence_lift", "lift", ".2f"),
)


def _sid_root(dataset: str) -> Path:
    """Where ``semantic-ids build`` writes by default: one folder per tokenizer and embedder."""
    return Path("runs") / dataset / "semantic_ids"


def _sid_dataset(name: str) -> Any:
    """The dataset ``--dataset`` names; Semantic IDs need its catalogue's item texts."""
    from recloop.experiment import DataConfig, load_data

    if name not in SID_DATASETS:
        raise RecloopError(f"--dataset must be one of {', '.join(SID_DATASETS)}, not {name!r}")
    with console.status(f"loading {name}"):
        dataset, _ = load_data(DataConfig.model_validate({"dataset": name}))
    if dataset.catalog is None:
        raise RecloopError(f"{name} has no item catalogue to build Semantic IDs from")
    return dataset


def _sid_config(path: Path | None, options: dict[str, Any]) -> Any:
    """The :class:`SemanticIdConfig` of a TOML file's ``[semantic_ids]`` table with the
    command-line options on top; an error names the field and where its value came from."""
    from recloop.runconfig import read_toml
    from recloop.semantic_ids.build import SemanticIdConfig

    table: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path)
        extra = sorted(set(raw) - {"semantic_ids"})
        if extra:
            raise RecloopError(
                f"{path}: unknown field '{extra[0]}' (settings go in a [semantic_ids] table)"
            )
        table = raw.get("semantic_ids", {})
        if not isinstance(table, dict):
            raise RecloopError(f"{path}: 'semantic_ids' must be a table")
    source: dict[tuple[str, ...], str] = {}  # field → the option that set it

    def put(keys: tuple[str, ...], value: Any, option: str) -> None:
        target = table
        for depth, key in enumerate(keys[:-1]):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                field = ".".join(("semantic_ids", *keys[: depth + 1]))
                raise RecloopError(f"{path}: field '{field}' must be a table")
        target[keys[-1]] = value
        source[keys] = option

    if options["embedder"] is not None:
        put(("embedder", "kind"), options["embedder"], "--embedder")
    if options["tokenizer"] is not None:
        put(("tokenizer",), options["tokenizer"], "--tokenizer")
    tokenizer = table.get("tokenizer", "rqvae")
    if tokenizer in SID_TOKENIZERS:  # else validation reports the tokenizer itself
        for name in ("levels", "codebook_size", "seed"):
            if options[name] is not None:
                put((tokenizer, name), options[name], "--" + name.replace("_", "-"))
    if options["seed"] is not None:
        put(("embedder", "seed"), options["seed"], "--seed")
    try:
        return SemanticIdConfig.model_validate(table)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        where = source.get(loc) or (str(path) if path is not None else "semantic-ids config")
        field = ".".join(("semantic_ids", *loc))
        raise RecloopError(f"{where}: field '{field}': {err['msg']}") from None


def _with_progress(config: Any) -> Any:
    """Turn on RQ-VAE's training progress bar on a terminal (residual k-means has none)."""
    if config.tokenizer != "rqvae" or not console.is_terminal or config.rqvae.progress:
        return config
    return config.model_copy(update={"rqvae": config.rqvae.model_copy(update={"progress": True})})


def _sid_text(values: Any, suffix: bool = True) -> str:
    """A Semantic ID as ``(12, 201, 7 | 0)``: the codes, then the collision suffix."""
    codes = [str(int(v)) for v in values]
    if suffix:
        return f"({', '.join(codes[:-1])} | {codes[-1]})"
    return f"({', '.join(codes)}, *)"


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


@sid_app.command("build")
@user_errors
def semantic_ids_build(
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML file with a \\[semantic_ids] table"
    ),
    embedder: str | None = typer.Option(
        None, help="sentence-transformers or tfidf", show_default="sentence-transformers"
    ),
    tokenizer: str | None = typer.Option(None, help="rqvae or rkmeans", show_default="rqvae"),
    levels: int | None = typer.Option(
        None, help="codes per ID before the suffix", show_default="3"
    ),
    codebook_size: int | None = typer.Option(None, help="codes per level, K", show_default="256"),
    out: Path | None = typer.Option(
        None,
        help="artifact folder",
        show_default="runs/<dataset>/semantic_ids/<tokenizer>-<embedder>",
    ),
    seed: int | None = typer.Option(
        None, min=0, help="tokenizer, TF-IDF SVD and report sampling seed", show_default="0"
    ),
) -> None:
    """Build Semantic IDs for a whole catalogue, save them and report quality per level.

    Options override the config file; the artifacts and report.json go to --out.
    """
    from recloop.benchmark import json_text
    from recloop.semantic_ids.build import SemanticIds
    from recloop.semantic_ids.embed import ItemTextBuilder, embed_items
    from recloop.semantic_ids.quality import level_report

    options = {"embedder": embedder, "tokenizer": tokenizer, "levels": levels}
    options |= {"codebook_size": codebook_size, "seed": seed}
    sid_config = _sid_config(config, options)  # a bad config or --out fails before data loads
    tokenizer_config = sid_config.tokenizer_config()
    kind = f"{sid_config.tokenizer}-{sid_config.embedder.kind}"
    target = out if out is not None else _sid_root(dataset) / kind
    check_writable(target, "--out", folder=True)
    data = _sid_dataset(dataset)
    catalog = data.catalog
    console.print(
        f"[bold]{dataset}[/]: {len(catalog):,} items; {sid_config.embedder.kind} embeddings, "
        f"{sid_config.tokenizer} with {tokenizer_config.levels} levels × "
        f"{tokenizer_config.codebook_size} codes, seed {tokenizer_config.seed}"
    )
    started = time.perf_counter()
    sids = SemanticIds.build(catalog, _with_progress(sid_config), progress=console.is_terminal)
    sids.config = sid_config  # saved without the display-only progress flag
    build_seconds = time.perf_counter() - started
    sids.save(target)
    with console.status("measuring every level"):
        report_started = time.perf_counter()
        texts = ItemTextBuilder(template=sid_config.text_template).texts(catalog)
        vectors = embed_items(texts, sids.embedder)  # from the cache the build filled
        interactions = data.interactions.positive().to_csr()
        rows = level_report(
            vectors, sids.codes[:, :-1], sids.tokenizer, interactions, seed=tokenizer_config.seed
        )
        report_seconds = time.perf_counter() - report_started
    suffix = sids.codes[:, -1]
    report = {
        "dataset": dataset,
        "n_items": len(sids.codes),
        "config": sid_config.model_dump(mode="json"),
        "embedder": sids.embedder.identity,
        "vocab": list(sids.vocab),
        "collisions": int(np.count_nonzero(suffix)),
        "max_suffix": int(suffix.max(initial=0)),
        "coherence_interactions": "positive interactions, binary users × items",
        "levels": rows,
        "seconds": {"build": round(build_seconds, 3), "report": round(report_seconds, 3)},
    }
    (target / SID_REPORT).write_text(json_text(report))

    table = Table(title=f"Semantic IDs — {dataset}, {kind}, vocab {list(sids.vocab)}")
    table.add_column("level", justify="right")
    for _, header, _ in SID_COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [_cell(row[key], spec) for key, _, spec in SID_COLUMNS]
        table.add_row(str(row["level"]), *cells)
    console.print(table)
    console.print(
        f"{report['collisions']:,} items needed a collision suffix (largest {report['max_suffix']})"
        f"\nSemantic IDs: {target}\nreport: {target / SID_REPORT}\n"
        f"built in {build_seconds:.1f} s, measured in {report_seconds:.1f} s"
    )


def _newest_sids(dataset: str) -> Path:
    """The most recently built folder under ``runs/<dataset>/semantic_ids``."""
    root = _sid_root(dataset)
    found = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RecloopError(
            f"no Semantic IDs under {root}; run `recloop semantic-ids build --dataset {dataset}` "
            "first (or give --ids DIR)"
        )
    if len(found) > 1:
        console.print(f"using the newest of {len(found)} under {root} (choose one with --ids)")
    return found[-1].parent


def _built_on(report: Path) -> str | None:
    """The dataset a ``build`` report names (None without a report)."""
    if not report.is_file():
        return None
    rebuild = "rebuild with `recloop semantic-ids build`"
    try:
        payload = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = one_line(exc)
        raise RecloopError(f"{report}: damaged ({reason}); {rebuild}") from None
    if not isinstance(payload, dict):
        raise RecloopError(f"{report}: damaged (not a JSON object); {rebuild}")
    built_on = payload.get("dataset")
    return str(built_on) if built_on is not None else None


@sid_app.command("inspect")
@user_errors
def semantic_ids_inspect(
    item: str = typer.Argument(..., help="external item id, as in the dataset"),
    ids: Path | None = typer.Option(
        None,
        help="folder written by build",
        show_default="the newest under runs/<dataset>/semantic_ids",
    ),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
    neighbours: int = typer.Option(5, help="items listed per prefix depth"),
) -> None:
    """Show ITEM's Semantic ID and the items sharing each prefix of it, most specific last.

    Neighbours are listed most interacted-with first.
    """
    from recloop.semantic_ids.build import MANIFEST, SemanticIds

    if neighbours < 0:
        raise RecloopError(f"--neighbours must be 0 or more, not {neighbours}")
    if ids is None:
        folder = _newest_sids(dataset)
    elif not (ids / MANIFEST).is_file():
        raise RecloopError(f"{ids}: no Semantic IDs there; run `recloop semantic-ids build` first")
    else:
        folder = ids
    built_on = _built_on(folder / SID_REPORT)
    if built_on is not None and built_on != dataset:
        raise RecloopError(f"{folder} holds Semantic IDs of {built_on}; pass --dataset {built_on}")
    sids = SemanticIds.load(folder)
    data = _sid_dataset(dataset)
    catalog = data.catalog
    codes = sids.codes
    if len(codes) != len(catalog):
        raise RecloopError(
            f"{folder} holds {len(codes):,} Semantic IDs but {dataset} has {len(catalog):,} items; "
            "rebuild them with `recloop semantic-ids build`"
        )
    index = int(catalog.items.index([item], unknown="new")[0])
    if index < 0:
        needle = item.casefold()
        matches = [i for i, title in enumerate(catalog.title) if needle in title.casefold()]
        hint = ""
        if matches:
            named = ", ".join(f"{catalog.items.id_of(i)} ({catalog.title[i]})" for i in matches[:5])
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            hint = f"; titles containing {item!r}: {named}{more}"
        raise RecloopError(f"no item with id {item!r} in {dataset}{hint}")

    from rich.markup import escape

    popularity = data.interactions.positive().item_counts()
    console.print(f"Semantic IDs: {folder}")
    console.print(f"[bold]{escape(catalog.title[index])}[/] (item {escape(item)}, {dataset})")
    console.print(
        f"Semantic ID {_sid_text(codes[index])}: {sids.levels} levels and a collision suffix, "
        f"vocab {list(sids.vocab)}"
    )
    for depth in range(1, sids.levels + 1):
        shared = (codes[:, :depth] == codes[index, :depth]).all(axis=1)
        shared[index] = False
        others = np.flatnonzero(shared)
        others = others[np.lexsort((others, -popularity[others]))]  # most popular first
        n = len(others)
        count = "1 other item shares it" if n == 1 else f"{n:,} other items share it"
        listed = ", most interacted-with:" if neighbours and n else ""
        prefix = _sid_text(codes[index, :depth], suffix=False)
        console.print(f"depth {depth} {prefix}: {count}{listed}")
        for other in others[:neighbours]:
            console.print(
                f"  {escape(catalog.items.id_of(int(other))):>8}  {escape(catalog.title[other])}"
                f"  {_sid_text(codes[other])}"
            )


def _register_service_commands() -> None:
    from recloop.service.cli import register

    register(app, console, user_errors)


_register_service_commands()


def _register_engine_commands() -> None:
    from recloop.engine.cli import register

    register(app, console, user_errors)


_register_engine_commands()


def _register_generative_commands() -> None:
    from recloop.generative import cli_chat, cli_explain, cli_onboard, cli_review

    cli_explain.register(app, console, user_errors)
    cli_review.register(app, console, user_errors)
    cli_chat.register(app, console, user_errors)
    cli_onboard.register(app, console, user_errors)


_register_generative_commands()
