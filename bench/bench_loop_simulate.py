"""Feedback loop in the simulator: a per-segment bandit over blend weights vs static blends.

python bench/bench_loop_simulate.py                 # writes bench/results/loop_simulate.json
python bench/bench_loop_simulate.py --caches-only   # only the cache part, merged into it

Simulated users click the item at position j with probability σ(affinity) / log2(j + 1); the
affinity is hidden (planted synthetic tastes, or an oracle EASE fitted on all of MovieLens-100K
that is never a candidate source). Candidate sources are EASE and Popular fitted on observed
(train) data; every policy blends them with recloop.engine.blend.Blender. All policies, and
every fixed arm they are compared with, read the same users and the same uniforms per (round,
user, position): common random numbers. The bandit's logs then estimate the equal-weight
blend off-policy (IPS, SNIPS), checked against that blend's own simulated CTR.

The cache part reruns MovieLens-100K seed 0's standard policies with
recloop.engine.sim_caches.CacheAccounting watching: what the service's candidate cache and
explanation cache (cold, and with each round's slates pregenerated) would hit. The clicks are
checked to be the same as in the run without it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, read_results, write_results
from recloop.data.synthetic import SyntheticConfig, generate
from recloop.engine.bandit import BanditConfig
from recloop.engine.offpolicy import ips, snips
from recloop.engine.sim_caches import CacheAccounting
from recloop.engine.simulator import (
    BanditBlend,
    Policy,
    Reward,
    Setup,
    SimulationResult,
    Simulator,
    default_arms,
    movielens_setup,
    standard_policies,
    synthetic_setup,
)

SEEDS = (0, 1, 2)
TARGET_PROB = 0.8
SYNTHETIC = SyntheticConfig()  # data seed = run seed
SYNTHETIC_NAME = f"synthetic-u{SYNTHETIC.n_users}-i{SYNTHETIC.n_items}-n{SYNTHETIC.n_interactions}"
OPE_FIRST_SEED = 1000  # the bandit seeds of the off-policy check start here
CACHES_SEED = 0  # the MovieLens run the cache part watches
CACHES_SUFFIX = " (caches)"  # the cache part's records are "<policy> (caches)"
EXTRA_REWARDS: tuple[Reward, ...] = (
    "any_click",
    "ctr",
)  # bandit variants; the main bandit learns per position


def policies(sources: tuple[str, ...], seed: int) -> dict[str, Policy]:
    """The standard set plus bandits learning from the other two rewards."""
    out = standard_policies(sources, seed)
    for reward in EXTRA_REWARDS:
        out[f"BanditBlend[{reward}]"] = BanditBlend(
            default_arms(sources), BanditConfig(seed=seed), reward=reward
        )
    return out


def policy_metrics(result: SimulationResult, name: str) -> dict[str, float]:
    """CTR, regrets and, for bandits, per-segment best-arm probabilities and rounds to 0.8."""
    r = result.policies[name]
    metrics: dict[str, float] = {
        "ctr": r.ctr,
        "expected_ctr": r.expected_ctr,
        "clicks": float(r.clicks.sum()),
        "regret_vs_best_fixed": float(r.regret_vs_best_fixed[-1]),
        "regret_vs_equal": float(r.regret_vs_equal[-1]),
    }
    if r.arm_probabilities is None:
        return metrics
    never = float(result.rounds + 1)
    best = r.best_arm_probability(result.segments)
    reached = result.rounds_to(name, TARGET_PROB)
    for s in result.segments:
        metrics[f"best_prob/{s}"] = float(best[s][-1])
        metrics[f"rounds_to_0.8/{s}"] = float(reached[s] or never)
    metrics["best_prob_min"] = min(float(p[-1]) for p in best.values())
    metrics["segments_reached_0.8"] = float(np.mean([v is not None for v in reached.values()]))
    return metrics


def ope_check(dataset: str, setup: Setup, n_seeds: int, rounds: int, users: int) -> BenchRecord:
    """The off-policy row over many bandit seeds on seed 0's draws: bias and coverage."""
    sim = Simulator(setup.population, setup.sources, setup.train, seed=0)
    rows = []
    for b in range(OPE_FIRST_SEED, OPE_FIRST_SEED + n_seeds):
        pols: dict[str, Policy] = {
            "BanditBlend": BanditBlend(default_arms(sim.source_names), BanditConfig(seed=b)),
            "EqualWeights": standard_policies(sim.source_names)["EqualWeights"],
        }
        rows.append(offpolicy_metrics(sim.run(pols, rounds, users)))
    metrics = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    for method in ("ips", "snips"):  # the spread of one run's error
        metrics[f"{method}_rel_error_std"] = float(
            np.std([r[f"{method}_rel_error"] for r in rows], ddof=1)
        )
    return make_record(
        dataset=dataset,
        protocol="all",
        seed=0,
        model=f"EqualWeights (off-policy, {n_seeds} bandit seeds)",
        config={
            "rounds": rounds,
            "users_per_round": users,
            "bandit_seeds": f"{OPE_FIRST_SEED}-{OPE_FIRST_SEED + n_seeds - 1}",
            "figures": "mean over bandit seeds",
        },
        metrics=metrics,
    )


def offpolicy_metrics(result: SimulationResult) -> dict[str, float]:
    """IPS/SNIPS of the equal-weight blend from BanditBlend's logs vs its own simulated CTR."""
    logs = result.policies["BanditBlend"].logs
    arms = result.policies["BanditBlend"].arm_names
    target = (logs.arm == arms.index(result.equal_arm)).astype(np.float64)
    truth = float(result.policies["EqualWeights"].logs.reward.mean())
    metrics: dict[str, float] = {"true_value": truth}
    for method, estimate in (
        ("ips", ips(logs.reward, logs.propensity, target)),
        ("snips", snips(logs.reward, logs.propensity, target)),
    ):
        metrics[method] = estimate.value
        metrics[f"{method}_low"] = estimate.low
        metrics[f"{method}_high"] = estimate.high
        metrics[f"{method}_rel_error"] = (estimate.value - truth) / truth
        metrics[f"{method}_covers"] = float(estimate.low <= truth <= estimate.high)
        metrics["effective_n"] = estimate.effective_n
    return metrics


def run_one(
    dataset: str, setup: Setup, seed: int, rounds: int, users: int, data_seed: int
) -> list[BenchRecord]:
    """One seeded simulation: a record per policy, the best fixed arm and the off-policy row."""
    sim = Simulator(setup.population, setup.sources, setup.train, seed=seed)
    pols = policies(sim.source_names, seed)
    began = time.perf_counter()
    result = sim.run(pols, rounds, users)
    seconds = time.perf_counter() - began
    common: dict[str, Any] = {
        "rounds": rounds,
        "users_per_round": users,
        "k": sim.k,
        "data_seed": data_seed,
    }

    def record(model: str, config: dict[str, Any], metrics: dict[str, float]) -> BenchRecord:
        return make_record(
            dataset=dataset, protocol="all", seed=seed, model=model, config=config, metrics=metrics
        )

    records = []
    for name, policy in pols.items():
        config = dict(common)
        if isinstance(policy, BanditBlend):
            config |= {"arms": len(policy.arms), "reward": policy.reward, "epsilon": 0.05}
        else:
            config["weights"] = policy.arm_names[0] if hasattr(policy, "arm_names") else name
        rec = record(name, config, policy_metrics(result, name))
        rec.train_seconds = seconds if name == "BanditBlend" else None
        records.append(rec)
    best = result.best_fixed_arms()
    totals = result.reference_clicks.sum(axis=1)
    shown = result.reference_shown.sum(axis=(1, 2))[0]
    index = [result.reference_arms.index(best[s]) for s in result.segments]
    clicks = float(sum(totals[a, j] for j, a in enumerate(index)))
    best_metrics = {"ctr": clicks / shown, "clicks": clicks, "regret_vs_best_fixed": 0.0}
    # how hard each segment is: the expected-CTR gap between its best and second-best arm
    expected = result.reference_expected.sum(axis=1) / result.reference_shown.sum(axis=1)
    for j, s in enumerate(result.segments):
        top, second = np.sort(expected[:, j])[::-1][:2]
        best_metrics[f"gap_to_second/{s}"] = float((top - second) / top)
    records.append(record("BestFixedArmInHindsight", common | {"per": "segment"}, best_metrics))
    records.append(
        record(
            "EqualWeights (off-policy)",
            common | {"logs": "BanditBlend", "rows": len(result.policies["BanditBlend"].logs.arm)},
            offpolicy_metrics(result),
        )
    )
    return records


def cache_part(
    setup: Setup, rounds: int, users: int, checks: list[BenchRecord]
) -> list[BenchRecord]:
    """MovieLens seed 0's standard policies with the cache accounting watching; ``checks``
    are that run's records without it, whose clicks must be the same."""
    sim = Simulator(setup.population, setup.sources, setup.train, seed=CACHES_SEED)
    pols = standard_policies(sim.source_names, CACHES_SEED)
    accounting = CacheAccounting.for_setup(setup)
    began = time.perf_counter()
    result = sim.run(pols, rounds, users, observer=accounting)
    seconds = time.perf_counter() - began
    clicks = {r.model: r.metrics["clicks"] for r in checks if "clicks" in r.metrics}
    records = []
    for name, rates in accounting.rates().items():
        got = float(result.policies[name].clicks.sum())
        if clicks.get(name) != got:  # the accounting only watches: the same clicks
            raise SystemExit(f"{name}: {got:.0f} clicks watched, {clicks.get(name)} in the run")
        metrics = {k: float(v) for k, v in rates.to_dict().items() if not isinstance(v, bool)}
        metrics |= {"ctr": result.policies[name].ctr, "clicks": got}
        metrics["pregenerated_per_explanation"] = rates.pregenerated / max(1, rates.explanations)
        rec = make_record(
            dataset="ml-100k",
            protocol="all",
            seed=CACHES_SEED,
            model=name + CACHES_SUFFIX,
            config={
                "rounds": rounds,
                "users_per_round": users,
                "k": sim.k,
                "explainer": "template",
            },
            metrics=metrics,
        )
        rec.train_seconds = seconds if name == "BanditBlend" else None
        records.append(rec)
    return records


def report(records: list[BenchRecord]) -> None:
    for rec in records:
        m = rec.metrics
        if "ips" in m:
            print(
                f"    {rec.model:28s} truth {m['true_value']:.4f}  ips {m['ips']:.4f} "
                f"[{m['ips_low']:.4f}, {m['ips_high']:.4f}]  snips {m['snips']:.4f} "
                f"[{m['snips_low']:.4f}, {m['snips_high']:.4f}]  n_eff {m['effective_n']:.0f}"
            )
            continue
        if rec.model.endswith(CACHES_SUFFIX):
            print(
                f"    {rec.model:28s} candidates {m['candidate_hit_rate']:.1%}  explanations "
                f"cold {m['explanation_hit_rate']:.1%}, pregenerated "
                f"{m['pregenerated_hit_rate']:.1%} ({m['pregenerated']:,.0f} generated ahead, "
                f"{m['distinct_explanations']:,.0f} distinct of {m['explanations']:,.0f})"
            )
            continue
        extra = ""
        if rec.model == "BestFixedArmInHindsight":
            gaps = ", ".join(
                f"{k.split('/')[1]} {v:.1%}" for k, v in m.items() if k.startswith("gap_to_")
            )
            extra = f"; best vs second arm, expected CTR gap: {gaps}"
        if "best_prob_min" in m:
            probs = ", ".join(
                f"{k.split('/')[1]} {v:.2f}" for k, v in m.items() if k.startswith("best_prob/")
            )
            rounds = ", ".join(f"{v:.0f}" for k, v in m.items() if k.startswith("rounds_to_0.8/"))
            extra = f"; P(best) {probs}; rounds to 0.8: {rounds}"
        print(
            f"    {rec.model:28s} ctr {m['ctr']:.4f}  regret vs best fixed "
            f"{m['regret_vs_best_fixed']:7.0f}  vs equal {m.get('regret_vs_equal', 0):7.0f}{extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--users-per-round", type=int, default=200)
    parser.add_argument("--no-movielens", action="store_true", help="skip the MovieLens population")
    parser.add_argument(
        "--no-caches", action="store_true", help="skip the cache part (a few minutes)"
    )
    parser.add_argument(
        "--caches-only",
        action="store_true",
        help="run only the cache part and replace its records in the existing results file",
    )
    parser.add_argument(
        "--ope-seeds",
        type=int,
        default=20,
        help="bandit seeds for the off-policy bias and coverage check (0: skip)",
    )
    args = parser.parse_args()
    if args.caches_only and (args.no_caches or args.no_movielens):
        parser.error("--caches-only needs the cache part and MovieLens")
    started = time.perf_counter()
    records: list[BenchRecord] = []
    dataset_ml = None
    if not args.no_movielens:
        from recloop.datasets import movielens_100k

        dataset_ml = movielens_100k()  # a missing dataset is an error, never a silent skip
    if args.caches_only:
        assert dataset_ml is not None
        merge_caches(dataset_ml, args.rounds, args.users_per_round)
        print(f"done in {time.perf_counter() - started:.0f} s")
        return
    for seed in SEEDS:
        runs: list[tuple[str, Setup]] = [
            (SYNTHETIC_NAME, synthetic_setup(generate(SYNTHETIC.model_copy(update={"seed": seed}))))
        ]
        if dataset_ml is not None:
            runs.append(("ml-100k", movielens_setup(dataset_ml, seed)))
        for name, setup in runs:
            print(f"{name} seed {seed}: {args.rounds} rounds x {args.users_per_round} users")
            recs = run_one(name, setup, seed, args.rounds, args.users_per_round, seed)
            report(recs)
            records += recs
        if seed == 0 and args.ope_seeds:
            for name, setup in runs:
                rec = ope_check(name, setup, args.ope_seeds, args.rounds, args.users_per_round)
                print(
                    f"{name}: off-policy check over {args.ope_seeds} bandit seeds (draws of seed 0)"
                )
                report([rec])
                m = rec.metrics
                print(
                    f"    relative error ips {m['ips_rel_error']:+.4f} ± "
                    f"{m['ips_rel_error_std']:.4f}, snips {m['snips_rel_error']:+.4f} ± "
                    f"{m['snips_rel_error_std']:.4f}; coverage ips {m['ips_covers']:.2f}, snips "
                    f"{m['snips_covers']:.2f}"
                )
                records.append(rec)
        if seed == CACHES_SEED and dataset_ml is not None and not args.no_caches:
            print(f"ml-100k seed {seed}: the service's caches")
            setup_ml = dict(runs)["ml-100k"]
            checks = [r for r in records if r.dataset == "ml-100k" and r.seed == seed]
            recs = cache_part(setup_ml, args.rounds, args.users_per_round, checks)
            report(recs)
            records += recs
    records.sort(key=lambda r: (r.dataset != SYNTHETIC_NAME, r.seed))
    path = write(records, args.rounds, args.users_per_round)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


def merge_caches(dataset: Any, rounds: int, users: int) -> None:
    """The cache part alone, its records replacing the old ones in the results file."""
    from recloop.benchmark import RESULTS_DIR

    path = RESULTS_DIR / "loop_simulate.json"
    old = read_results(path).records
    checks = [r for r in old if r.dataset == "ml-100k" and r.seed == CACHES_SEED]
    if any(
        (r.config.get("rounds"), r.config.get("users_per_round")) != (rounds, users) for r in checks
    ):
        raise SystemExit(f"{path} holds runs of another size: rerun the whole bench")
    print(f"ml-100k seed {CACHES_SEED}: the service's caches")
    recs = cache_part(movielens_setup(dataset, CACHES_SEED), rounds, users, checks)
    report(recs)
    kept = [r for r in old if not r.model.endswith(CACHES_SUFFIX)]
    records = sorted(kept + recs, key=lambda r: (r.dataset != SYNTHETIC_NAME, r.seed))
    print(f"wrote {write(records, rounds, users)}")


def write(records: list[BenchRecord], rounds: int, users: int) -> Path:
    return write_results(
        "loop_simulate",
        records,
        title="Feedback loop in the simulator: bandit over blend weights vs static blends",
        command="python bench/bench_loop_simulate.py",
        description=description(rounds, users),
        columns=[
            "ctr",
            "regret_vs_best_fixed",
            "regret_vs_equal",
            "best_prob/low",
            "best_prob/mid",
            "best_prob/high",
            "rounds_to_0.8/low",
            "rounds_to_0.8/mid",
            "rounds_to_0.8/high",
            "true_value",
            "ips",
            "ips_covers",
            "snips",
            "snips_covers",
            "effective_n",
            "candidate_hit_rate",
            "explanation_hit_rate",
            "pregenerated_hit_rate",
        ],
    )


def description(rounds: int, users: int) -> str:
    return (
        f"{rounds} rounds of {users} simulated users (sampled without replacement per round), "
        "slates of 10. Click model: P(click at position j) = σ(affinity) / log2(j + 1) with "
        "affinity = scale · z + bias, z the per-user z-score of the hidden truth. "
        f"{SYNTHETIC_NAME}: truth = log P(item | user) from the generator's planted tastes "
        "(scale 2, bias −3.5), data seed = run seed; sources EASE (l2 300) and Popular fitted "
        "on all observed rows. ml-100k: truth = an oracle EASE (l2 1000) fitted on all 100k "
        "ratings (scale 0.5, bias −3.5), never a candidate; sources EASE (l2 300) and Popular "
        "fitted on the train part of ratio split <seed> only. Segments (what policies see): "
        "activity terciles low/mid/high of the observed (train) rows. Arms: EASE weight 1, "
        "0.75, 0.5, 0.25, 0 (Popular the rest); arm 0.5/0.5 is the static equal-weight blend. "
        "BanditBlend = one ThompsonBandit (epsilon 0.05, Beta(1, 1)) per segment, updated after "
        "every round with each shown position as a Bernoulli trial; [any_click] learns from "
        "any click per slate, [ctr] from clicks/10 as one fractional trial. Every policy and "
        "every fixed arm read the same users and uniforms (common random numbers). "
        "regret_vs_best_fixed = clicks of the best fixed arm per segment in hindsight minus the "
        "policy's; regret_vs_equal = the equal-weight blend's clicks minus the policy's "
        "(negative: the policy won). best_prob/<segment> = the bandit's final probability of "
        "that segment's best arm (most expected clicks there); rounds_to_0.8/<segment> = the "
        f"first round after which it was >= {TARGET_PROB} ({rounds + 1}: never). "
        "EqualWeights (off-policy): IPS and SNIPS of the equal-weight blend's per-slate CTR from "
        "BanditBlend's logged (segment, arm, propensity, clicks), against the CTR the "
        "equal-weight blend got in its own run on the same draws (true_value); *_covers = 1 when "
        "the 95 % interval holds it. BestFixedArmInHindsight also gives gap_to_second/<segment>: "
        "the relative expected-CTR gap between a segment's best and second-best arm (how hard "
        "it is to tell them apart). The EqualWeights (off-policy, N bandit seeds) rows rerun "
        f"the bandit with seeds {OPE_FIRST_SEED}-{OPE_FIRST_SEED}+N-1 on seed 0's population "
        "and draws and show means over them: *_rel_error is the mean relative error (the "
        "bias), *_rel_error_std its standard deviation over the seeds (one run's error), "
        "*_covers the coverage of the 95 % intervals. "
        f"<policy> (caches) rows: ml-100k seed {CACHES_SEED}'s standard policies rerun with "
        "recloop.engine.sim_caches.CacheAccounting watching (same clicks, checked), counting "
        "what the service's caches would hit if each policy served the run alone. "
        "candidate_hit_rate: one lookup per slate, a hit when the policy showed the user a "
        "slate before and the user has not clicked since (a click is an event, and the "
        "service's key holds the history's length and last event); the simulator's candidates "
        "themselves never change. explanation_hit_rate: every shown item explained (as if "
        "every user opened every explanation) by the template Explainer through a content-hash "
        "ExplanationCache per policy, keys scoped to the user, no eviction or expiry; evidence "
        "= the item, the train history plus the items clicked so far in the run, the item's "
        "source and blended score, EASE item-weight drivers for EASE items and the most similar "
        "history items for Popular ones. pregenerated_hit_rate: the same requests after "
        "pregenerate() filled the cache before each round with the round's users' slates under "
        "the arm the policy was then most likely to play in their segment; the job is told who "
        "comes next (an upper bound), so static policies reach 1 by construction and the bandit "
        "misses where it explores. pregenerated = explanations generated off the request path, "
        "distinct_explanations = cold cache entries."
    )


if __name__ == "__main__":
    main()
