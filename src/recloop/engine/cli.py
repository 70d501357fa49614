"""``recloop simulate``: the feedback loop against static blends on simulated users."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class PopulationKind(StrEnum):
    synthetic = "synthetic"
    movielens = "movielens"


def build_setup(population: PopulationKind, seed: int) -> Any:
    """The population and its candidate sources; MovieLens missing is an error, no fallback."""
    from recloop.engine.simulator import movielens_setup, synthetic_setup

    if population is PopulationKind.movielens:
        from recloop.datasets import movielens_100k
        from recloop.errors import DatasetNotFoundError

        try:
            dataset = movielens_100k()
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(
                f"--population movielens needs MovieLens-100K: {exc}"
            ) from None
        return movielens_setup(dataset, seed)
    from recloop.data.synthetic import SyntheticConfig, generate

    return synthetic_setup(generate(SyntheticConfig(seed=seed)))


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add ``simulate`` to the main CLI."""

    @app.command()
    @user_errors
    def simulate(
        population: PopulationKind = typer.Option(
            PopulationKind.synthetic,
            "--population",
            help="synthetic (planted tastes) or movielens (an oracle EASE on all of ML-100K)",
        ),
        rounds: int = typer.Option(
            50, "--rounds", min=1, help="rounds; the bandit learns after each"
        ),
        users_per_round: int = typer.Option(
            200, "--users-per-round", min=1, help="simulated users shown a slate per round"
        ),
        seed: int = typer.Option(
            0, "--seed", min=0, help="data, split, click draws and bandit seed"
        ),
        k: int = typer.Option(10, "--k", min=1, help="slate length"),
        out: Path = typer.Option(
            Path("reports/simulate"), "--out", help="where simulation.json goes"
        ),
        caches: bool = typer.Option(
            False,
            "--caches",
            help="also count what the service's candidate and explanation caches would hit, "
            "cold and with each round's slates pregenerated (slower: each new explanation is "
            "generated and checked)",
        ),
    ) -> None:
        """Run the bandit blend against the equal-weight and single-source blends.

        Every policy sees the same users and the same click draws (common random numbers).
        Prints CTR, clicks, regrets and each segment's final best-arm probability, and writes
        ``simulation.json``. With ``--caches`` it also prints each policy's cache hit rates
        (the clicks stay the same) and adds them under ``caches``.
        """
        from recloop.benchmark import json_text
        from recloop.cli import check_writable
        from recloop.engine.sim_caches import CacheAccounting
        from recloop.engine.simulator import Simulator, standard_policies

        check_writable(out, "--out", folder=True)  # before the simulation, not after it
        started = time.perf_counter()
        with console.status(f"building the {population.value} population and sources"):
            setup = build_setup(population, seed)
            sim = Simulator(setup.population, setup.sources, setup.train, k=k, seed=seed)
            accounting = CacheAccounting.for_setup(setup) if caches else None
        policies = standard_policies(sim.source_names, seed)
        console.print(
            f"[bold]{setup.dataset}[/]: {setup.population.n_users:,} users, "
            f"{setup.population.n_items:,} items; truth: {setup.notes['truth']}; sources: "
            f"{setup.notes['sources']}"
        )
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("rounds", total=rounds)
            result = sim.run(
                policies,
                rounds,
                users_per_round,
                progress=lambda done: bar.update(task, completed=done),
                observer=accounting,
            )
        data = result.to_dict()
        segments = list(result.segments)
        table = Table(
            title=f"{setup.dataset}: {rounds} rounds × {users_per_round} users, k={k}, seed {seed}"
        )
        for col in ("policy", "CTR", "clicks", "regret vs best fixed", "regret vs equal"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for s in segments:
            table.add_column(f"P(best arm) {s}", justify="right")
        for name, entry in data["policies"].items():
            final = entry.get("final_best_arm_probability", {})
            table.add_row(
                name,
                f"{entry['ctr']:.4f}",
                f"{entry['clicks']:,}",
                f"{entry['regret_vs_best_fixed']:,.0f}",
                f"{entry['regret_vs_equal']:,.0f}",
                *(f"{final[s]:.2f}" if s in final else "–" for s in segments),
            )
        console.print(table)
        best = ", ".join(f"{s}: {a}" for s, a in data["best_fixed_arm"].items())
        console.print(f"best fixed arm per segment in hindsight: {best}")
        if accounting is not None:
            data["caches"] = accounting.to_dict()
            console.print(_cache_table(data["caches"]))
        data["population"] = {
            "kind": population.value,
            "dataset": setup.dataset,
            "description": setup.population.description,
            **setup.notes,
        }
        out.mkdir(parents=True, exist_ok=True)
        path = out / "simulation.json"
        path.write_text(json_text(data))
        console.print(f"wrote {path} in {time.perf_counter() - started:.1f} s")


def _cache_table(caches: dict[str, Any]) -> Table:
    """Per policy: the candidate cache's hit rate, the explanation cache's cold and
    pregenerated hit rates, and how many explanations were generated ahead of requests."""
    table = Table(title="cache hit rates (as the service would see them)")
    for col in ("policy", "slates", "candidates", "explanations", "cold", "pregenerated", "ahead"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in caches["policies"].items():
        table.add_row(
            name,
            f"{r['slates']:,}",
            f"{r['candidate_hit_rate']:.1%}",
            f"{r['explanations']:,}" if "explanations" in r else "–",
            f"{r['explanation_hit_rate']:.1%}" if "explanation_hit_rate" in r else "–",
            f"{r['pregenerated_hit_rate']:.1%}" if "pregenerated_hit_rate" in r else "–",
            f"{r['pregenerated']:,}" if "pregenerated" in r else "–",
        )
    return table
