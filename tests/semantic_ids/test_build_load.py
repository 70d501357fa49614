"""Damaged Semantic-ID folders and bad seeds: a RecloopError naming the file or the field,
never a KeyError, a NumPy error or a scikit-learn traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from recloop import cli
from recloop.cli import app
from recloop.errors import RecloopError
from recloop.semantic_ids.build import CODES, MANIFEST, SemanticIdConfig, SemanticIds

runner = CliRunner()
SMALL = {
    "tokenizer": "rkmeans",
    "embedder": {"kind": "tfidf", "dim": 16},
    "rkmeans": {"levels": 2, "codebook_size": 8},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recloop.data.synthetic import SyntheticConfig, generate

    catalog = generate(SyntheticConfig()).dataset.catalog
    folder = tmp_path_factory.mktemp("sids") / "good"
    cache = folder.parent / "cache"
    SemanticIds.build(catalog, SemanticIdConfig.model_validate(SMALL), cache_dir=cache).save(folder)
    return folder


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "sids"
    shutil.copytree(saved, folder)
    return folder


def test_a_good_folder_loads(saved: Path) -> None:
    sids = SemanticIds.load(saved)
    assert sids.levels == 2 and sids.codes.shape[1] == len(sids.vocab) == 3


@pytest.mark.parametrize("key", ["config", "vocab"])
def test_manifest_missing_a_field(copy: Path, key: str) -> None:
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest[key]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecloopError, match=f"{MANIFEST}: no '{key}' field"):
        SemanticIds.load(copy)


def test_manifest_with_a_bad_config_names_the_field(copy: Path) -> None:
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["config"]["tokenizer"] = "nope"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecloopError, match=r"manifest\.json: field 'config\.tokenizer'"):
        SemanticIds.load(copy)
    (copy / MANIFEST).write_text("[1, 2]")
    with pytest.raises(RecloopError, match="must be a JSON object"):
        SemanticIds.load(copy)


def test_truncated_or_misshapen_codes(copy: Path) -> None:
    data = (copy / CODES).read_bytes()
    (copy / CODES).write_bytes(data[:40])
    with pytest.raises(RecloopError, match=r"codes\.npy: unreadable"):
        SemanticIds.load(copy)
    np.save(copy / CODES, np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(RecloopError, match=r"codes\.npy: expected integer codes of shape"):
        SemanticIds.load(copy)
    np.save(copy / CODES, np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(RecloopError, match="found float32"):
        SemanticIds.load(copy)


def test_negative_seeds_are_refused() -> None:
    for table in ("rkmeans", "rqvae", "embedder"):
        with pytest.raises(ValidationError, match="seed must be 0 or more, not -1"):
            SemanticIdConfig.model_validate({table: {"seed": -1}})


def test_cli_build_refuses_a_negative_seed_and_a_file_as_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(name: str) -> None:
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(cli, "_sid_dataset", no_data)
    result = runner.invoke(app, ["semantic-ids", "build", "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output
    config = tmp_path / "sid.toml"
    config.write_text("[semantic_ids]\ntokenizer = 'rkmeans'\n[semantic_ids.rkmeans]\nseed = -1\n")
    result = runner.invoke(app, ["semantic-ids", "build", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert "field 'semantic_ids.rkmeans'" in result.stderr and "seed must be 0" in result.stderr
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    result = runner.invoke(app, ["semantic-ids", "build", "--out", str(afile)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: --out {afile}: exists and is not a folder"
    assert afile.read_text() == "keep me"


def test_cli_inspect_with_a_damaged_report(copy: Path) -> None:
    report = copy / "report.json"
    for text in ("{not json", "[1, 2]"):
        report.write_text(text)
        result = runner.invoke(app, ["semantic-ids", "inspect", "1", "--ids", str(copy)])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: {report}: damaged")
        assert "recloop semantic-ids build" in result.stderr and "Traceback" not in result.output


def test_cli_inspect_with_a_damaged_manifest(copy: Path) -> None:
    (copy / MANIFEST).write_text(json.dumps({"format_version": 1, "vocab": [8, 8, 16]}))
    result = runner.invoke(
        app, ["semantic-ids", "inspect", "1", "--ids", str(copy), "--dataset", "synthetic"]
    )
    assert result.exit_code == 2, result.output
    assert f"{copy / MANIFEST}: no 'config' field" in result.stderr
