"""SID-SASRec: the shared contract with and without ID embeddings, and cold items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from recloop.errors import RecloopError
from recloop.models.base import ModelConfig
from recloop.models.sid_sasrec import SIDSASRec, SIDSASRecConfig

from .contract import ModelContract, planted, planted_catalog
from .sid_fixtures import PLANTED_SIDS
from .test_sasrec import FAST as SASREC_FAST

FAST: dict[str, object] = {**SASREC_FAST, "semantic_ids": PLANTED_SIDS}


class TestSIDSASRecContract(ModelContract):
    model_class = SIDSASRec
    uses_catalog = True
    artifact_files: ClassVar = ["manifest.json", "semantic_ids", "weights.safetensors"]
    invalid_configs: ClassVar = [{"hidden": 30, "n_heads": 4}, {"item_id": "maybe"}]

    def make_config(self) -> ModelConfig:
        return SIDSASRecConfig(**FAST)  # type: ignore[arg-type]


class TestSIDSASRecWithIdContract(TestSIDSASRecContract):
    def make_config(self) -> ModelConfig:
        return SIDSASRecConfig(**{**FAST, "item_id": True})  # type: ignore[arg-type]


@pytest.mark.parametrize("item_id", [False, True])
def test_new_items_are_scored_from_their_tokens(item_id: bool) -> None:
    data = planted()
    model = SIDSASRec(SIDSASRecConfig(**{**FAST, "item_id": item_id}))  # type: ignore[arg-type]
    model.fit(data.train, catalog=planted_catalog())
    before = model.score(data.queries)
    new = model.add_items(["Film 900. Genres: drama, drama cinema"])
    after = model.score(data.queries)
    assert after.shape == (len(data.queries), data.n_items + 1)
    np.testing.assert_allclose(after[:, : data.n_items], before, rtol=1e-5, atol=1e-5)
    # the new item ranks higher for drama fans (group 0) than for everyone else
    rank = (after > after[:, new[0]][:, None]).sum(axis=1)
    fans = data.group == 0
    assert np.median(rank[fans]) < np.median(rank[~fans])


def test_cold_items_have_no_id_embedding() -> None:
    """An item without train interactions is represented by its SID tokens alone."""
    data = planted()
    model = SIDSASRec(SIDSASRecConfig(**{**FAST, "item_id": True, "max_epochs": 2}))  # type: ignore[arg-type]
    model.fit(data.train, catalog=planted_catalog())
    net = model.net_
    with torch.no_grad():
        table = net.item_table()  # type: ignore[operator]
        tokens_only = net.tokens(net.codes).sum(dim=1)  # type: ignore[union-attr, operator]
    assert model.known_.all()
    assert not torch.allclose(table[:-1], tokens_only[:-1])
    model.add_items(["Film 901. Genres: western"])
    with torch.no_grad():
        table = net.item_table()  # type: ignore[operator]
        tokens_only = net.tokens(net.codes).sum(dim=1)  # type: ignore[union-attr, operator]
    torch.testing.assert_close(table[-2], tokens_only[-2])


def test_sid_sasrec_needs_a_catalogue() -> None:
    with pytest.raises(RecloopError, match="catalog"):
        SIDSASRec(SIDSASRecConfig(**FAST)).fit(planted().train)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[SIDSASRec, Path]:
    """A fitted model and the directory it was saved to (copy it before damaging it)."""
    cfg = SIDSASRecConfig(**{**FAST, "max_epochs": 1})  # type: ignore[arg-type]
    model = SIDSASRec(cfg).fit(planted().train, catalog=planted_catalog())
    folder = tmp_path_factory.mktemp("sid_sasrec") / "model"
    model.save(folder)
    return model, folder


def _copy(saved: tuple[SIDSASRec, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved[1], folder)
    return folder


def test_manifest_records_the_semantic_ids(saved: tuple[SIDSASRec, Path]) -> None:
    model, folder = saved
    record = json.loads((folder / "manifest.json").read_text())["semantic_id_codes"]
    assert record["count"] == model.n_items_ == len(model.sids_.codes)
    assert len(record["sha256"]) == 64


def test_load_refuses_semantic_ids_of_another_fit(
    saved: tuple[SIDSASRec, Path], tmp_path: Path
) -> None:
    """Same shape, other codes: the recorded hash tells them apart."""
    folder = _copy(saved, tmp_path)
    codes = np.load(folder / "semantic_ids" / "codes.npy")
    np.save(folder / "semantic_ids" / "codes.npy", codes[::-1].copy())
    with pytest.raises(RecloopError, match=r"semantic_ids/codes\.npy.*SHA-256"):
        SIDSASRec.load(folder)


def test_load_refuses_semantic_ids_for_fewer_items(
    saved: tuple[SIDSASRec, Path], tmp_path: Path
) -> None:
    """Even an artifact saved before the hash was recorded has its code count checked."""
    folder = _copy(saved, tmp_path)
    codes = np.load(folder / "semantic_ids" / "codes.npy")
    np.save(folder / "semantic_ids" / "codes.npy", codes[:-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["semantic_id_codes"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    n = saved[0].n_items_
    with pytest.raises(RecloopError, match=rf"semantic_ids/codes\.npy: .* for {n - 1} items"):
        SIDSASRec.load(folder)


def test_artifacts_without_the_semantic_id_hash_still_load(
    saved: tuple[SIDSASRec, Path], tmp_path: Path
) -> None:
    folder = _copy(saved, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["semantic_id_codes"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    queries = planted().queries
    np.testing.assert_array_equal(SIDSASRec.load(folder).score(queries), saved[0].score(queries))
