"""The artifact registry on a real folder: versions, the active pointer, rollback, crashes."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recloop.data import Interactions, Queries
from recloop.models import EASE, EASEConfig, Popular
from recloop.store.artifacts import ArtifactError, ArtifactRegistry, VersionInfo

ITEMS = ["apple", "bread", "cheese", "dates", "eggs"]
USERS = ["ann", "bob", "cat", "dan"]


def interactions() -> Interactions:
    return Interactions.from_arrays([0, 0, 1, 1, 1, 2, 2, 3, 3], [0, 1, 1, 2, 3, 0, 3, 2, 4])


def popular() -> Popular:
    return Popular().fit(interactions())


def register(reg: ArtifactRegistry, **metadata: Any) -> str:
    return reg.register(popular(), item_ids=ITEMS, user_ids=USERS, metadata=metadata)


def test_round_trip_gives_identical_recommendations(tmp_path: Path) -> None:
    model = EASE(EASEConfig(l2=1.0)).fit(interactions())
    reg = ArtifactRegistry(tmp_path / "artifacts")
    version = reg.register(model, item_ids=ITEMS, user_ids=USERS, metadata={"ndcg": 0.5})
    loaded = reg.load(version)

    queries = Queries.from_lists([0, 1, -1], [[0], [1, 2], []])
    want_items, want_scores = model.recommend(queries, 3)
    got_items, got_scores = loaded.model.recommend(queries, 3)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert isinstance(loaded.model, EASE)
    assert loaded.version == version == "v0001"
    assert loaded.items.ids() == ITEMS and loaded.users.ids() == USERS
    assert loaded.items.index(["cheese"])[0] == 2
    assert loaded.info == reg.info(version)
    assert loaded.info.model == "EASE" and loaded.info.metadata == {"ndcg": 0.5}
    assert (loaded.info.n_items, loaded.info.n_users) == (5, 4)
    assert abs(loaded.info.created_at - time.time()) < 60
    root = tmp_path / "artifacts" / "versions" / version
    assert json.loads((root / "ids.json").read_text()) == {"items": ITEMS, "users": USERS}
    assert json.loads((root / "manifest.json").read_text())["version"] == version
    assert (root / "model" / "weights.safetensors").is_file()
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.pickle"))


def test_versions_are_numbered_and_listed_oldest_first(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    assert reg.versions() == []
    names = [register(reg, run=n) for n in range(3)]
    assert names == ["v0001", "v0002", "v0003"]
    infos = reg.versions()
    assert all(isinstance(i, VersionInfo) for i in infos)
    assert [i.version for i in infos] == names
    assert [i.metadata["run"] for i in infos] == [0, 1, 2]
    assert [i.created_at for i in infos] == sorted(i.created_at for i in infos)


def test_concurrent_registrations_claim_distinct_versions(tmp_path: Path) -> None:
    regs = [ArtifactRegistry(tmp_path), ArtifactRegistry(tmp_path)]
    results: list[str] = []
    lock = threading.Lock()

    def work(reg: ArtifactRegistry) -> None:
        for _ in range(4):
            name = register(reg)
            with lock:
                results.append(name)

    threads = [threading.Thread(target=work, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [f"v{n:04d}" for n in range(1, 9)]
    assert [i.version for i in regs[0].versions()] == sorted(results)
    assert not list(tmp_path.glob(".tmp-*"))


def test_activate_active_rollback_and_history(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    v1, v2, v3 = (register(reg) for _ in range(3))
    assert reg.active() is None
    with pytest.raises(ArtifactError, match="no active model version"):
        reg.load()
    with pytest.raises(ArtifactError, match="no earlier version"):
        reg.rollback()

    reg.activate(v1)
    with pytest.raises(ArtifactError, match="no earlier version"):
        reg.rollback()
    reg.activate(v2)
    reg.activate(v3)
    assert reg.active() == v3 and reg.load().version == v3
    assert (tmp_path / "ACTIVE").read_text().strip() == v3

    assert reg.rollback() == v2
    assert reg.active() == v2 and reg.load().version == v2
    assert reg.rollback() == v1
    assert reg.active() == v1
    with pytest.raises(ArtifactError, match="no earlier version"):
        reg.rollback()

    reg.activate(v3)
    assert reg.rollback() == v1

    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["version"] for h in history] == [v1, v2, v3, v2, v1, v3, v1]
    assert [bool(h.get("rollback")) for h in history] == [0, 0, 0, 1, 1, 0, 1]
    assert all(isinstance(h["at"], float) for h in history)
    assert reg.history() == history
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_versions_are_named_with_the_known_ones(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    with pytest.raises(ArtifactError, match=r"'v0001' \(known: none\)"):
        reg.info("v0001")
    register(reg)
    register(reg)
    for call in (reg.info, reg.activate, reg.load):
        with pytest.raises(ArtifactError, match=r"'v0009' \(known: v0001, v0002\)"):
            call("v0009")
    with pytest.raises(ArtifactError, match=re.escape("unknown model version '../versions/v0001'")):
        reg.info("../versions/v0001")
    assert reg.active() is None


def test_wrong_number_of_ids_is_refused(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    with pytest.raises(ArtifactError, match="4 item ids for a model of 5 items"):
        reg.register(popular(), item_ids=ITEMS[:4], user_ids=USERS)
    with pytest.raises(ArtifactError, match="5 user ids for a model of 4 users"):
        reg.register(popular(), item_ids=ITEMS, user_ids=[*USERS, "eve"])
    with pytest.raises(ArtifactError, match="duplicate item ids"):
        reg.register(popular(), item_ids=["a", "b", "a", "c", "d"], user_ids=USERS)
    with pytest.raises(ArtifactError, match="not fitted"):
        reg.register(Popular(), item_ids=ITEMS, user_ids=USERS)
    with pytest.raises(ArtifactError, match="not JSON-serialisable"):
        reg.register(popular(), item_ids=ITEMS, user_ids=USERS, metadata={"x": object()})
    assert reg.versions() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["versions"]


class CrashingModel(Popular):
    """Dies half-way through ``save``, after writing part of its files."""

    def save(self, path: Path) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "weights.safetensors").write_bytes(b"half")
        raise RuntimeError("disk on fire")


def test_a_crash_never_leaves_a_version(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    # what a process killed mid-save leaves behind
    leftover = tmp_path / ".tmp-0123456789abcdef"
    (leftover / "model").mkdir(parents=True)
    (leftover / "manifest.json").write_text('{"version": "v0001", "mod')

    crashing = CrashingModel().fit(interactions())
    with pytest.raises(RuntimeError, match="disk on fire"):
        reg.register(crashing, item_ids=ITEMS, user_ids=USERS)
    assert reg.versions() == []
    assert [p.name for p in tmp_path.glob(".tmp-*")] == [leftover.name]
    assert register(reg) == "v0001"
    assert [i.version for i in ArtifactRegistry(tmp_path).versions()] == ["v0001"]


def test_stale_staging_folders_are_swept(tmp_path: Path) -> None:
    ArtifactRegistry(tmp_path)
    old, fresh = tmp_path / ".tmp-old", tmp_path / ".tmp-fresh"
    old.mkdir()
    fresh.mkdir()
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    ArtifactRegistry(tmp_path)
    assert not old.exists() and fresh.exists()


def test_corrupt_files_are_errors_naming_them(tmp_path: Path) -> None:
    reg = ArtifactRegistry(tmp_path)
    version = register(reg)
    folder = tmp_path / "versions" / version
    manifest = folder / "manifest.json"
    good = manifest.read_text()

    manifest.write_text("{not json")
    with pytest.raises(ArtifactError, match=re.escape(f"{manifest}: unreadable manifest")):
        reg.info(version)
    manifest.write_text(json.dumps({"version": version}))
    with pytest.raises(ArtifactError, match=re.escape(f"{manifest}: invalid manifest")):
        reg.versions()
    manifest.unlink()
    with pytest.raises(ArtifactError, match=re.escape(f"{manifest}: missing")):
        reg.load(version)

    manifest.write_text(good)
    (folder / "ids.json").write_text(json.dumps({"items": ITEMS[:2], "users": USERS}))
    with pytest.raises(ArtifactError, match=re.escape("ids.json: 2 items and 4 users")):
        reg.load(version)
    (folder / "ids.json").write_text(json.dumps({"items": ITEMS, "users": USERS}))
    (folder / "model" / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="cannot load the model") as info:
        reg.load(version)
    assert "\n" not in str(info.value)


def test_two_workers_see_each_others_activation(tmp_path: Path) -> None:
    trainer, worker = ArtifactRegistry(tmp_path), ArtifactRegistry(tmp_path)
    v1, v2 = register(trainer), register(trainer)
    assert worker.pointer_mtime() == 0
    assert [i.version for i in worker.versions()] == [v1, v2]

    trainer.activate(v1)
    seen = worker.pointer_mtime()
    assert seen > 0 and worker.active() == v1
    # back-to-back activations within one filesystem clock tick still move the pointer
    for version in (v2, v1, v2):
        trainer.activate(version)
        now = worker.pointer_mtime()
        assert now > seen
        seen = now
    assert worker.load().version == v2
    assert worker.rollback() == v1
    assert trainer.active() == v1 and trainer.pointer_mtime() > seen
