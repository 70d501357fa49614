"""Feedback loop: Thompson bandit over blend weights on planted arms, and off-policy estimates.

python bench/bench_loop_bandit.py     # writes bench/results/loop_bandit.json

Eight arms are eight blend-weight settings (relevance, diversity, novelty); arm 0 is the static
equal-weight blend. Four segments each have their own best arm. Every round shows a batch of
impressions per segment, clicks are drawn from the planted rates, and the bandit is updated
after the round. Every policy compared reads the same pre-drawn click matrix (common random
numbers). The bandit's logs then score four other policies off-policy with IPS and SNIPS.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.engine.bandit import BanditConfig, ThompsonBandit
from recloop.engine.offpolicy import ips, snips, target_probabilities

DATASET = "synthetic-planted-arms"
SEEDS = (0, 1, 2)
COVERAGE_FIRST_SEED = 100  # the extra coverage seeds start here, apart from SEEDS
TARGET_PROB = 0.8

# (relevance, diversity, novelty) weights of each arm; arm 0 is the static equal-weight blend
WEIGHTS = [
    (1 / 3, 1 / 3, 1 / 3),
    (1.0, 0.0, 0.0),
    (0.7, 0.3, 0.0),
    (0.7, 0.0, 0.3),
    (0.8, 0.1, 0.1),
    (0.4, 0.5, 0.1),
    (0.4, 0.1, 0.5),
    (0.5, 0.25, 0.25),
]
ARMS = [f"r={r:.2f},d={d:.2f},n={n:.2f}" for r, d, n in WEIGHTS]
EQUAL_ARM = 0
# click rates by rank: the best is 11 % (relative) above the second
LADDER = (0.100, 0.090, 0.085, 0.080, 0.075, 0.070, 0.065, 0.060)
# per segment, the arms from best to worst; the equal-weight blend always ranks 4th (0.080)
RANKING = {
    "new": (1, 4, 2, 0, 3, 7, 5, 6),
    "casual": (5, 7, 2, 0, 1, 4, 6, 3),
    "heavy": (6, 3, 7, 0, 5, 4, 1, 2),
    "niche": (7, 6, 5, 0, 2, 3, 4, 1),
}
SEGMENTS = tuple(RANKING)
SKEWED = np.array([0.05, 0.40, 0.20, 0.10, 0.10, 0.05, 0.05, 0.05])


def planted_rates() -> dict[str, np.ndarray]:
    """Per segment, the true click rate of every arm."""
    rates = {}
    for segment, order in RANKING.items():
        r = np.empty(len(ARMS))
        r[list(order)] = LADDER
        rates[segment] = r
    return rates


def target_policies(rates: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The alternative policies scored off-policy: per segment, a distribution over arms."""
    k = len(ARMS)
    return {
        "always-best-arm": {s: np.eye(k)[int(np.argmax(r))] for s, r in rates.items()},
        "uniform": {s: np.full(k, 1.0 / k) for s in rates},
        "skewed-fixed": {s: SKEWED for s in rates},
        "equal-weight-blend": {s: np.eye(k)[EQUAL_ARM] for s in rates},
    }


@dataclass
class Run:
    """One seeded simulation: what the bandit and the static baselines earned, and the logs."""

    bandit_metrics: dict[str, float]
    equal_clicks: float
    best_fixed_clicks: float
    shown: int
    seconds: float
    segment: list[str]
    arm: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray


def simulate(seed: int, rounds: int, batch: int, rates: dict[str, np.ndarray]) -> Run:
    """The bandit over ``rounds`` rounds of ``batch`` impressions per segment, updated per round."""
    k = len(ARMS)
    rng = np.random.default_rng([seed, 2024])
    # the common random numbers: clicks[segment][round, impression, arm], read by every policy
    clicks = {s: rng.random((rounds, batch, k)) < rates[s][None, None, :] for s in SEGMENTS}
    bandit = ThompsonBandit(ARMS, BanditConfig(seed=seed))
    logs: dict[str, list[np.ndarray]] = {"arm": [], "prop": [], "reward": []}
    segments: list[str] = []
    first_round = dict.fromkeys(SEGMENTS, 0)  # 0: not reached (yet)
    stable_round = dict.fromkeys(SEGMENTS, 0)  # the round from which it stayed >= TARGET_PROB
    got = 0.0
    expected_regret = 0.0
    began = time.perf_counter()
    for t in range(rounds):
        for s in SEGMENTS:
            arms, props = bandit.choose_many(s, batch)
            reward = clicks[s][t, np.arange(batch), arms].astype(np.float64)
            bandit.update_many(s, arms, reward)
            got += float(reward.sum())
            expected_regret += float(np.sum(rates[s].max() - rates[s][arms]))
            logs["arm"].append(arms)
            logs["prop"].append(props)
            logs["reward"].append(reward)
            segments += [s] * batch
            above = bandit.probabilities(s)[int(np.argmax(rates[s]))] >= TARGET_PROB
            if above and not first_round[s]:
                first_round[s] = t + 1
            if above and not stable_round[s]:
                stable_round[s] = t + 1
            elif not above:
                stable_round[s] = 0
    seconds = time.perf_counter() - began

    shown = rounds * batch * len(SEGMENTS)
    totals = {s: clicks[s].sum(axis=(0, 1)) for s in SEGMENTS}  # clicks per arm, whole horizon
    best_fixed = sum(float(totals[s].max()) for s in SEGMENTS)  # best fixed arm per segment
    equal = sum(float(totals[s][EQUAL_ARM]) for s in SEGMENTS)
    best_probs = [float(bandit.probabilities(s)[int(np.argmax(rates[s]))]) for s in SEGMENTS]
    reached = [r for r in first_round.values() if r]
    never = rounds + 1.0
    metrics: dict[str, float] = {
        "ctr": got / shown,
        "clicks": got,
        "regret_vs_best_fixed": best_fixed - got,
        "regret_vs_equal": equal - got,
        "expected_regret": expected_regret,
        "segments_reached_0.8": len(reached) / len(SEGMENTS),
        "segments_at_0.8_end": float(np.mean([p >= TARGET_PROB for p in best_probs])),
        "rounds_to_0.8": float(max(reached)) if len(reached) == len(SEGMENTS) else never,
        "best_prob_min": min(best_probs),
        "best_prob_mean": float(np.mean(best_probs)),
    }
    for s, p in zip(SEGMENTS, best_probs, strict=True):
        metrics[f"best_prob/{s}"] = p
        metrics[f"rounds_to_0.8/{s}"] = float(first_round[s] or never)
        metrics[f"stable_from/{s}"] = float(stable_round[s] or never)
    return Run(
        bandit_metrics=metrics,
        equal_clicks=equal,
        best_fixed_clicks=best_fixed,
        shown=shown,
        seconds=seconds,
        segment=segments,
        arm=np.concatenate(logs["arm"]),
        propensity=np.concatenate(logs["prop"]),
        reward=np.concatenate(logs["reward"]),
    )


def loop_records(dataset: str, seed: int, run: Run, rounds: int, batch: int) -> list[BenchRecord]:
    """The bandit and the two static baselines, on the same clicks."""
    common = {"arms": len(ARMS), "segments": len(SEGMENTS), "rounds": rounds, "batch": batch}
    config = BanditConfig(seed=seed)

    def record(model: str, config: dict[str, object], metrics: dict[str, float]) -> BenchRecord:
        return make_record(
            dataset=dataset, protocol="all", seed=seed, model=model, config=config, metrics=metrics
        )

    bandit = record(
        "ThompsonBandit",
        {**common, "epsilon": config.epsilon, "draws": config.draws},
        run.bandit_metrics,
    )
    bandit.train_seconds = run.seconds
    return [
        bandit,
        record(
            "EqualWeightBlend",
            {**common, "arm": ARMS[EQUAL_ARM]},
            {"ctr": run.equal_clicks / run.shown, "clicks": run.equal_clicks},
        ),
        record(
            "BestFixedArmInHindsight",
            {**common, "per": "segment"},
            {"ctr": run.best_fixed_clicks / run.shown, "clicks": run.best_fixed_clicks},
        ),
    ]


def offpolicy_records(
    dataset: str, seed: int, run: Run, rates: dict[str, np.ndarray]
) -> list[BenchRecord]:
    """IPS and SNIPS of each alternative policy from the bandit's logs, against the truth."""
    records = []
    for name, policy in target_policies(rates).items():
        truth = float(np.mean([policy[s] @ rates[s] for s in SEGMENTS]))  # equal traffic
        target = target_probabilities(policy.__getitem__, run.segment, run.arm)
        estimates = {
            "ips": ips(run.reward, run.propensity, target),
            "snips": snips(run.reward, run.propensity, target),
        }
        metrics = {"true_value": truth, "effective_n": estimates["ips"].effective_n}
        for method, e in estimates.items():
            metrics[method] = e.value
            metrics[f"{method}_low"] = e.low
            metrics[f"{method}_high"] = e.high
            metrics[f"{method}_rel_error"] = (e.value - truth) / truth
            metrics[f"{method}_covers"] = float(e.low <= truth <= e.high)
        records.append(
            make_record(
                dataset=dataset,
                protocol="all",
                seed=seed,
                model=name,
                config={"logs": "ThompsonBandit", "rows": len(run.reward)},
                metrics=metrics,
            )
        )
    return records


def coverage_records(
    n_seeds: int, rounds: int, batch: int, rates: dict[str, np.ndarray]
) -> list[BenchRecord]:
    """The off-policy rows averaged over many more seeds: *_covers becomes the coverage."""
    first = COVERAGE_FIRST_SEED
    dataset = f"{DATASET},seeds={first}-{first + n_seeds - 1}"
    per_policy: dict[str, list[dict[str, float]]] = {}
    for seed in range(first, first + n_seeds):
        for rec in offpolicy_records(dataset, seed, simulate(seed, rounds, batch, rates), rates):
            per_policy.setdefault(rec.model, []).append(rec.metrics)
    records = []
    for name, runs in per_policy.items():
        metrics = {key: float(np.mean([m[key] for m in runs])) for key in runs[0]}
        records.append(
            make_record(
                dataset=dataset,
                protocol="all",
                seed=first,
                model=name,
                config={"logs": "ThompsonBandit", "seeds": n_seeds, "figures": "mean over seeds"},
                metrics=metrics,
            )
        )
    return records


def report(seed: int, recs: list[BenchRecord], rounds: int) -> None:
    """Print one seed's figures."""
    m = recs[0].metrics
    never = rounds + 1

    def when(value: float) -> str:
        return "never" if value >= never else f"round {value:.0f}"

    print(
        f"  seed {seed}: ctr {m['ctr']:.4f} (equal {recs[1].metrics['ctr']:.4f}, best fixed "
        f"{recs[2].metrics['ctr']:.4f}); regret vs best fixed {m['regret_vs_best_fixed']:.0f}, "
        f"vs equal {m['regret_vs_equal']:.0f}; segments >= {TARGET_PROB}: ever "
        f"{m['segments_reached_0.8']:.2f}, at end {m['segments_at_0.8_end']:.2f}"
    )
    for s in SEGMENTS:
        print(
            f"    {s:7s} final P(best) {m[f'best_prob/{s}']:.3f}; first >= {TARGET_PROB}: "
            f"{when(m[f'rounds_to_0.8/{s}'])}; stays from: {when(m[f'stable_from/{s}'])}"
        )
    for rec in recs[3:]:
        o = rec.metrics
        print(
            f"    {rec.model:20s} truth {o['true_value']:.4f}  ips {o['ips']:.4f} "
            f"[{o['ips_low']:.4f}, {o['ips_high']:.4f}]  snips {o['snips']:.4f} "
            f"[{o['snips_low']:.4f}, {o['snips_high']:.4f}]  n_eff {o['effective_n']:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batch", type=int, default=200, help="impressions per segment per round")
    parser.add_argument(
        "--more-traffic",
        type=int,
        nargs="*",
        default=[1000],
        help="also run the loop (no off-policy rows) with these impressions per segment per round",
    )
    parser.add_argument(
        "--coverage-seeds",
        type=int,
        default=100,
        help="extra seeds for the off-policy interval coverage (0: skip)",
    )
    args = parser.parse_args()

    rates = planted_rates()
    records: list[BenchRecord] = []
    coverage: dict[tuple[str, str], list[float]] = {}
    for batch in [args.batch, *args.more_traffic]:
        dataset = DATASET if batch == args.batch else f"{DATASET},batch={batch}"
        print(f"{dataset}: {args.rounds} rounds x {batch} impressions per segment")
        for seed in SEEDS:
            run = simulate(seed, args.rounds, batch, rates)
            recs = loop_records(dataset, seed, run, args.rounds, batch)
            if batch == args.batch:
                recs += offpolicy_records(dataset, seed, run, rates)
                for rec in recs[3:]:
                    for method in ("ips", "snips"):
                        covered = rec.metrics[f"{method}_covers"]
                        coverage.setdefault((rec.model, method), []).append(covered)
            report(seed, recs, args.rounds)
            records += recs
    for (policy, method), covers in coverage.items():
        print(f"coverage over seeds, {policy} {method}: {sum(covers):.0f}/{len(covers)}")
    if args.coverage_seeds:
        extra = coverage_records(args.coverage_seeds, args.rounds, args.batch, rates)
        print(f"{extra[0].dataset}: mean over {args.coverage_seeds} seeds")
        for rec in extra:
            m = rec.metrics
            print(
                f"  {rec.model:20s} coverage ips {m['ips_covers']:.3f}, snips "
                f"{m['snips_covers']:.3f}; mean relative error ips {m['ips_rel_error']:+.4f}, "
                f"snips {m['snips_rel_error']:+.4f}"
            )
        records += extra
    path = write_results(
        "loop_bandit",
        records,
        title="Feedback loop: Thompson bandit over blend weights, off-policy estimates",
        command="python bench/bench_loop_bandit.py",
        description=description(args.rounds, args.batch, args.more_traffic, args.coverage_seeds),
        columns=[
            "ctr",
            "regret_vs_best_fixed",
            "regret_vs_equal",
            "segments_reached_0.8",
            "segments_at_0.8_end",
            "rounds_to_0.8",
            "best_prob_min",
            "true_value",
            "ips",
            "ips_rel_error",
            "ips_covers",
            "snips",
            "snips_rel_error",
            "snips_covers",
            "effective_n",
        ],
    )
    print(f"wrote {path}")


def description(rounds: int, batch: int, more: list[int], coverage_seeds: int) -> str:
    extra = (
        f" The {DATASET},batch=N rows rerun the same loop with N impressions per segment per "
        f"round ({', '.join(map(str, more))}) to show how much traffic the target needs."
        if more
        else ""
    )
    if coverage_seeds:
        last = COVERAGE_FIRST_SEED + coverage_seeds - 1
        extra += (
            f" The {DATASET},seeds={COVERAGE_FIRST_SEED}-{last} rows repeat the off-policy "
            f"rows over {coverage_seeds} more seeds and show means over them: *_covers is "
            "there the coverage of the 95 % intervals, *_rel_error the mean relative error "
            "(the bias)."
        )
    return (
        f"Set-up: {len(ARMS)} arms = blend weights (relevance, diversity, novelty); arm 0 "
        f"({ARMS[EQUAL_ARM]}) is the static equal-weight blend. {len(SEGMENTS)} segments "
        f"({', '.join(SEGMENTS)}), each with a different best arm; planted click rates "
        f"{', '.join(f'{x:.3f}' for x in LADDER)} by rank (best 11 % above the second), the "
        f"equal-weight blend 4th (0.080) everywhere. {rounds} rounds of {batch} impressions per "
        "segment; the bandit (ThompsonBandit, epsilon 0.05, 1000 draws, Beta(1, 1) prior) is "
        "updated after each round. All policies read the same pre-drawn click matrix (common "
        "random numbers). Target: in every segment the best arm's selection probability "
        f"reaches >= {TARGET_PROB} within the {rounds} rounds. segments_reached_0.8 = share of "
        "segments where it did after some round's update, segments_at_0.8_end = share where it "
        "still is after the last round, rounds_to_0.8 = the round by which every segment had "
        "first reached it (horizon + 1 if some segment never did), best_prob_min = the lowest "
        "final best-arm probability over segments (per-segment figures are in the JSON). "
        "regret_vs_best_fixed = clicks of the best fixed arm per segment in hindsight minus the "
        "bandit's; regret_vs_equal = the equal-weight blend's clicks minus the bandit's "
        "(negative: the bandit won). Off-policy rows: from the bandit's logged (segment, arm, "
        "propensity, click), IPS and SNIPS estimates with 95 % intervals of four other policies "
        "(always-best-arm: an oracle one-hot on each segment's best arm; uniform; skewed-fixed: "
        f"{', '.join(f'{x:.2f}' for x in SKEWED)} over arms 0-7 in every segment; "
        "equal-weight-blend: always arm 0) against their true value from the planted rates; "
        "*_covers = 1 when the interval holds the truth, its mean over seeds is the coverage; "
        "effective_n = Kish effective sample size of the IPS weights." + extra
    )


if __name__ == "__main__":
    main()
