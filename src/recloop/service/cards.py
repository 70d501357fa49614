"""Model cards: what every trained version was trained on, how well it does, for whom, and
what it cannot do. Written when the version is trained, kept in its manifest, served at
``GET /v1/models/{version}/card`` (JSON, or Markdown with ``?format=markdown``).

The metrics come from a leave-last-out holdout of the same stored events: each user's last
positive event is hidden, a copy of the model is fitted on the rest (the served model itself
when it already trained on that split, as the early-stopped neural models do) and ranks the
full catalogue minus the user's history. They describe this deployment's data, not a
benchmark.
"""

from __future__ import annotations

import time
from typing import Any

from recloop.data.split import Split
from recloop.data.types import Interactions
from recloop.eval.evaluate import evaluate
from recloop.models.registry import build_model
from recloop.service.schemas import json_safe

CARD_FORMAT = "recloop-model-card/1"
KS = (10, 20)


def holdout_metrics(
    model_name: str, config: dict[str, Any], served: Any, split: Split, served_on_split: bool
) -> dict[str, Any]:
    """Metrics and activity-segment metrics on the split's test part (see module docstring)."""
    model = served
    if not served_on_split:
        model = build_model(model_name, config)
        model.fit(split.train)
    result = evaluate(model, split.evaluation_set("test"), KS, train=split.train, progress=False)
    segments = {
        name: {label: json_safe(dict(values)) for label, values in table.items()}
        for name, table in result.segments.items()
    }
    return {
        "users": result.n_users,
        "metrics": json_safe({k: float(v) for k, v in result.metrics.items()}),
        "beyond": json_safe({k: float(v) for k, v in result.beyond.items()}),
        "segments": segments,
    }


def model_card(
    *,
    version_hint: str,
    model_name: str,
    config: dict[str, Any],
    data: Interactions,
    withheld_users: int,
    erased_users: int,
    train_seconds: float,
    evaluation: dict[str, Any] | None,
    privacy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's content (JSON-ready)."""
    stamps = data.timestamp if len(data) else None
    kinds: dict[str, int] = {}
    for kind, count in zip(*_kind_counts(data), strict=True):
        kinds[kind] = count
    limitations = [
        "Users with no history the model knows get its training popularity, labelled "
        "source='popular'.",
        "Items added after training are not recommended by this version until the next "
        "retraining (except through the loop's content source).",
        "Metrics are from one leave-last-out holdout of the stored events; they carry sampling "
        "noise and describe past behaviour, not causal effects of the recommendations.",
    ]
    if evaluation and evaluation.get("segments"):
        gaps = []
        for name, table in evaluation["segments"].items():
            values = [v.get("ndcg@10") for v in table.values() if v.get("ndcg@10") is not None]
            if len(values) > 1:
                gaps.append(f"{name}: NDCG@10 from {min(values):.3f} to {max(values):.3f}")
        if gaps:
            limitations.append("Quality differs by segment (" + "; ".join(gaps) + ").")
    return json_safe(
        {
            "format": CARD_FORMAT,
            "model": model_name,
            "created_for": version_hint,
            "created_at": time.time(),
            "config": config,
            "data": {
                "events": len(data),
                "users": len(data.users),
                "items": len(data.items),
                "first_event": float(stamps.min()) if stamps is not None else None,
                "last_event": float(stamps.max()) if stamps is not None else None,
                "kinds": kinds,
                "users_withheld_no_training_consent": withheld_users,
                "users_erased_before_training": erased_users,
            },
            "protocol": {
                "training": "every stored event of users who allow training (neural models "
                "hold out each user's last event for early stopping)",
                "evaluation": "leave-last-out holdout of the stored events, full ranking over "
                "the catalogue minus the user's history, metrics at 10 and 20",
            },
            "evaluation": evaluation,
            "training_seconds": round(train_seconds, 3),
            "privacy": privacy or {"differential_privacy": None},
            "limitations": limitations,
        }
    )


def _kind_counts(data: Interactions) -> tuple[list[str], list[int]]:
    import numpy as np

    from recloop.data.types import EventKind

    if not len(data):
        return [], []
    codes, counts = np.unique(data.event, return_counts=True)
    return [EventKind(int(c)).name.lower() for c in codes], [int(n) for n in counts]


def card_markdown(version: str, card: dict[str, Any]) -> str:
    """The card as a readable Markdown page."""
    data = card.get("data", {})
    lines = [
        f"# Model card: {version} ({card.get('model')})",
        "",
        "## Data",
        f"- {data.get('events')} events of {data.get('users')} users on {data.get('items')} items",
        f"- kinds: {', '.join(f'{k} {v}' for k, v in (data.get('kinds') or {}).items())}",
        f"- users withheld (no training consent): {data.get('users_withheld_no_training_consent')}",
        f"- users erased before training: {data.get('users_erased_before_training')}",
        "",
        "## Protocol",
        f"- training: {card.get('protocol', {}).get('training')}",
        f"- evaluation: {card.get('protocol', {}).get('evaluation')}",
        "",
        "## Metrics",
    ]
    evaluation = card.get("evaluation")
    if evaluation:
        lines.append(f"Holdout users: {evaluation.get('users')}")
        lines.append("")
        lines.append("| metric | value |")
        lines.append("|---|---|")
        for name, value in {
            **evaluation.get("metrics", {}),
            **evaluation.get("beyond", {}),
        }.items():
            lines.append(f"| {name} | {value if value is None else f'{value:.4f}'} |")
        for segment, table in (evaluation.get("segments") or {}).items():
            lines += ["", f"### By {segment}", "", "| segment | NDCG@10 | users |", "|---|---|---|"]
            for label, values in table.items():
                ndcg = values.get("ndcg@10")
                shown = "n/a" if ndcg is None else f"{ndcg:.4f}"
                lines.append(f"| {label} | {shown} | {values.get('users', '')} |")
    else:
        lines.append("Not evaluated (trained without a card evaluation).")
    lines += ["", "## Privacy"]
    for key, value in (card.get("privacy") or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Limitations"]
    lines += [f"- {text}" for text in card.get("limitations", [])]
    return "\n".join(lines) + "\n"
