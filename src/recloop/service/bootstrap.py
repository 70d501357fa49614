"""Filling a new service: import a dataset into the store, train a model version from it.

``recloop serve`` calls :func:`import_dataset` and :func:`train_version` once on an empty
home, so a fresh clone answers with a real model; ``recloop model train`` calls
:func:`train_version` again whenever the operator wants a new version from the events the
service has collected since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from recloop.data.split import make_split
from recloop.data.types import Dataset, EventKind, IdMap, Interactions
from recloop.errors import ConfigError
from recloop.models.registry import build_model, model_class
from recloop.store.artifacts import ArtifactRegistry
from recloop.store.events import EventRecord, EventStore, ItemRecord, item_records, plain_value

IMPORT_BATCH = 10_000
Progress = Callable[[int], None]


def _catalog_records(dataset: Dataset) -> list[ItemRecord]:
    if dataset.catalog is None:
        return [ItemRecord(item_id=i) for i in dataset.interactions.items.ids()]
    return item_records(dataset.catalog)


def _event_records(dataset: Dataset, source: str) -> Iterator[list[EventRecord]]:
    inter = dataset.interactions
    user_ids = inter.users.ids()
    item_ids = inter.items.ids()
    for start in range(0, len(inter), IMPORT_BATCH):
        stop = min(start + IMPORT_BATCH, len(inter))
        yield [
            EventRecord(
                event_id=f"{source}-{row}",
                user_id=user_ids[int(inter.user[row])],
                item_id=item_ids[int(inter.item[row])],
                kind=EventKind(int(inter.event[row])),
                timestamp=float(inter.timestamp[row]),
                value=float(inter.value[row]),
            )
            for row in range(start, stop)
        ]


def import_dataset(
    store: EventStore, dataset: Dataset, *, source: str, progress: Progress | None = None
) -> int:
    """Copy a dataset's catalogue, users and interactions into the store; new events stored.

    Event ids are ``{source}-{row}``, so importing the same dataset twice stores nothing new.
    """
    store.upsert_items(_catalog_records(dataset))
    if dataset.users is not None:
        attrs = dataset.users.attributes
        store.upsert_users(
            [
                (user_id, {name: plain_value(values[row]) for name, values in attrs.items()})
                for row, user_id in enumerate(dataset.users.users.ids())
            ]
        )
    stored = 0
    for batch in _event_records(dataset, source):
        stored += store.add_events(batch).stored
        if progress is not None:
            progress(len(batch))
    return stored


def interactions_from_store(
    store: EventStore, users: IdMap | None = None, items: IdMap | None = None
) -> Interactions:
    """Stored events that name an item, in time order, as :class:`Interactions`.

    Without id maps, every event counts and the maps are built from the events (to train a
    new model). With a model's id maps, only events of users and items they hold count, in
    that model's index space; the maps are copied, never extended. Users who turned their
    training consent off are left out either way.
    """
    from recloop.store.privacy import PrivacyLog

    grow = users is None or items is None
    user_index = IdMap() if users is None else users.copy()
    item_index = IdMap() if items is None else items.copy()
    withheld = PrivacyLog(store).without_training_consent()
    rows: list[tuple[int, int, float, int, float]] = []
    for user_id, item_id, timestamp, kind, value in store.histories():
        if user_id in withheld:
            continue
        if not grow and (user_id not in user_index or item_id not in item_index):
            continue
        u = int(user_index.add([user_id])[0])
        i = int(item_index.add([item_id])[0])
        rows.append((u, i, timestamp, int(kind), 1.0 if value is None else value))
    if not rows:
        raise ConfigError("the event store holds no events with an item the model can use")
    u_col, i_col, t_col, k_col, v_col = (np.asarray(col) for col in zip(*rows, strict=True))
    return Interactions.from_arrays(
        u_col,
        i_col,
        t_col.astype(np.float64).astype(np.int64),
        v_col.astype(np.float32),
        k_col.astype(np.int8),
        users=user_index,
        items=item_index,
    )


def train_version(
    store: EventStore,
    registry: ArtifactRegistry,
    model_name: str,
    config: dict[str, Any] | None = None,
    *,
    activate: bool = True,
    card: bool = True,
) -> str:
    """Fit ``model_name`` on every stored event and register it; returns the new version.

    Models that stop early (the neural ones) hold out each user's last event as validation
    (a ``loo`` split); the others learn from everything. Serving always reads the full
    history from the store, so the held-out events still count at request time. With
    ``card``, the version's model card (:mod:`recloop.service.cards`) is evaluated on a
    leave-last-out holdout and stored in its manifest (a second fit for the models that
    learn from everything).
    """
    from recloop.service.cards import holdout_metrics, model_card
    from recloop.store.privacy import PrivacyLog

    model_class(model_name)  # unknown names fail before the store is read
    privacy = PrivacyLog(store)
    data_as_of = time.time()  # erasures from now on may miss the snapshot: see Retrainer.due
    data = interactions_from_store(store)
    model = build_model(model_name, config)
    split = make_split(data, "loo", seed=0)
    stops_early = bool(getattr(model.config, "early_stopping", False))
    started = time.perf_counter()
    model.fit(split if stops_early else data)
    seconds = time.perf_counter() - started
    model_config = model.config.model_dump(mode="json")
    metadata: dict[str, Any] = {
        "config": model_config,
        "events": len(data),
        "train_seconds": round(seconds, 3),
        "data_as_of": data_as_of,
    }
    if card:
        evaluation = holdout_metrics(model_name, model_config, model, split, stops_early)
        metadata["card"] = model_card(
            version_hint=f"{model_name} trained on {len(data)} events",
            model_name=model_name,
            config=model_config,
            data=data,
            withheld_users=len(privacy.without_training_consent()),
            erased_users=len(privacy.erased()),
            train_seconds=seconds,
            evaluation=evaluation,
            privacy=_privacy_summary(model),
        )
    version = registry.register(
        model, item_ids=data.items.ids(), user_ids=data.users.ids(), metadata=metadata
    )
    if activate:
        registry.activate(version)
    return version


def _privacy_summary(model: Any) -> dict[str, Any]:
    """What the card says about privacy: the model's own DP record when it has one."""
    report: Any = getattr(model, "privacy_", None)  # DPMultDAE's PrivacyReport
    dp = report.model_dump(mode="json") if report is not None else None
    return {
        "differential_privacy": dp,
        "consent": "users without training consent are left out of the training data",
        "erasure": "erased users' events are deleted before training; the model is rebuilt "
        "after every erasure",
    }
