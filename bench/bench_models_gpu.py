"""The neural models' training time and memory on a CUDA GPU (issue 4's "on a GPU when one is
available" figures).

    python bench/bench_models_gpu.py                 # SASRec (loo), Mult-VAE/DAE, DiffRec (ratio)
    python bench/bench_models_gpu.py --seeds 0 1 2   # more seeds (default: seed 0)

On a machine that gets a copy of the working tree, set ``RECLOOP_GIT_COMMIT=<sha of the copied
tree>`` so the records name the commit they ran (that copy's ``.git`` may be stale).

The same tuned configs as `bench/bench_models.py` (`configs/ml-100k/<protocol>/<Model>.toml`)
with ``device = "cuda"`` and everything else unchanged (float32, no mixed precision), so the
wall time and the peak GPU memory compare with the CPU table; test metrics are reported too,
since CUDA kernels are not bit-identical to the CPU's. Records go to
`bench/results/models_gpu.json`. It refuses to run without CUDA rather than time the CPU.
"""

from __future__ import annotations

import argparse
import sys

from bench_models import COLUMNS, config_path, throughput
from recloop.benchmark import BenchRecord, write_results

JOBS = (("loo", "SASRec"), ("ratio", "MultVAE"), ("ratio", "MultDAE"), ("ratio", "DiffRec"))
COMMAND = "python bench/bench_models_gpu.py"


def run(protocol: str, name: str, seed: int) -> BenchRecord:
    import torch

    from recloop.datasets import movielens_100k
    from recloop.experiment import fit_and_evaluate, split_data
    from recloop.models.registry import build_model
    from recloop.runconfig import load_run_config

    spec = load_run_config(config_path(protocol, name))
    dataset = movielens_100k()
    split = split_data(dataset, spec.data, seed)
    model = build_model(name, {**spec.model.config, "seed": seed, "device": "cuda"})
    torch.cuda.reset_peak_memory_stats()
    result = fit_and_evaluate(model, split, dataset, progress=False)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    speed = throughput(model, split.evaluation_set("test").queries)
    trials = spec.tuning.trials if spec.tuning else 0
    record = result.record("ml-100k", split, tuning_trials=trials)
    print(
        f"{protocol} {name} seed {seed}: ndcg@10 {result.test.metrics['ndcg@10']:.4f} in "
        f"{result.train_seconds:.1f} s, peak GPU {peak_gpu:.0f} MiB, {speed:,.0f} users/s",
        flush=True,
    )
    return record.model_copy(update={"users_per_s": speed, "peak_gpu_mb": peak_gpu})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("-m", "--model", action="append", help="only these models")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures GPU training only")
    jobs = [(p, m) for p, m in JOBS if not args.model or m in args.model]
    records: list[BenchRecord] = []
    for protocol, name in jobs:
        for seed in args.seeds:
            records.append(run(protocol, name, seed))
            save(records, args.seeds)  # after each run, so a cut-short session keeps its part
    return 0


def save(records: list[BenchRecord], seeds: list[int]) -> None:
    write_results(
        "models_gpu",
        records,
        title="Neural models trained on a GPU",
        command=COMMAND + (f" --seeds {' '.join(map(str, seeds))}" if seeds != [0] else ""),
        description=(
            'MovieLens-100K, the tuned configs of the CPU table above with `device = "cuda"` '
            "(float32, no mixed precision), early-stopped on the validation split; full-ranking "
            "test metrics; wall time of training (validation passes included), peak GPU memory "
            "allocated by torch (`peak_gpu_mb`), peak host RSS, and full-ranking top-10 "
            "inference in batches of 256 on the GPU. The GPU named under Machine. CUDA kernels "
            "are not bit-identical to the CPU's, so the metrics differ slightly from the CPU "
            "table's."
        ),
        columns=COLUMNS,
    )


if __name__ == "__main__":
    sys.exit(main())
