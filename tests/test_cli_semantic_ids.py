"""``recloop semantic-ids build`` and ``inspect`` on synthetic data: artifacts, report, errors.

One small build (TF-IDF with 16 dimensions, residual k-means with 2 levels of 8 codes) is shared
by the module; it runs from a temporary working directory so the default output folder is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cli_support import cli_error, cli_ok

SID_DIR = Path("runs/synthetic/semantic_ids/rkmeans-tfidf")
# levels and codebook size here are overridden by the command-line options
CONFIG = """\
[semantic_ids]
tokenizer = "rkmeans"

[semantic_ids.embedder]
kind = "tfidf"
dim = 16

[semantic_ids.rkmeans]
levels = 3
codebook_size = 16
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A working directory holding one build at the default place, and the build's output."""
    root = tmp_path_factory.mktemp("sid")
    (root / "sid.toml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECLOOP_CACHE", str(root / "cache"))
        mp.chdir(root)
        args = ["semantic-ids", "build", "--dataset", "synthetic", "-c", "sid.toml"]
        out = cli_ok([*args, "--levels", "2", "--codebook-size", "8", "--seed", "1"])
    yield root, out


@pytest.fixture
def in_built(built: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(built[0])
    return built[0] / SID_DIR


def test_build_writes_artifacts_and_one_report_entry_per_level(built: tuple[Path, str]) -> None:
    root, out = built
    folder = root / SID_DIR
    for name in ("manifest.json", "codes.npy", "embedder/manifest.json", "tokenizer/manifest.json"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["dataset"] == "synthetic" and report["n_items"] == 500
    config = report["config"]  # the options override the file, the rest comes from the file
    assert config["tokenizer"] == "rkmeans" and config["embedder"]["dim"] == 16
    assert config["rkmeans"]["levels"] == 2 and config["rkmeans"]["codebook_size"] == 8
    assert config["rkmeans"]["seed"] == 1 and config["embedder"]["seed"] == 1
    assert report["vocab"][:2] == [8, 8] and report["vocab"][2] > report["max_suffix"]
    codes = np.load(folder / "codes.npy")
    assert codes.shape == (500, 3)
    assert report["collisions"] == int(np.count_nonzero(codes[:, -1]))
    assert [row["level"] for row in report["levels"]] == [1, 2]
    for row in report["levels"]:
        assert 0 < row["utilisation"] <= 1 and row["coherence_lift"] is not None
    assert set(report["seconds"]) == {"build", "report"}
    assert "recon. MSE" in out and "lift" in out and str(SID_DIR / "report.json") in out


def test_inspect_prints_the_code_and_the_neighbours(in_built: Path) -> None:
    from recloop.data.synthetic import SyntheticConfig, generate

    catalog = generate(SyntheticConfig()).dataset.catalog
    assert catalog is not None
    codes = np.load(in_built / "codes.npy")
    item = 7
    out = cli_ok(["semantic-ids", "inspect", "i7", "--dataset", "synthetic", "--neighbours", "3"])
    assert catalog.title[item] in out
    c1, c2, suffix = codes[item]
    assert f"Semantic ID ({c1}, {c2} | {suffix})" in out
    for depth in (1, 2):
        shared = (codes[:, :depth] == codes[item, :depth]).all(axis=1)
        others = int(shared.sum()) - 1
        prefix = ", ".join(str(c) for c in codes[item, :depth])
        assert f"depth {depth} ({prefix}, *): {others} other item" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed and len(listed) <= 6
    for other in listed:  # each one shares at least the first level
        assert codes[int(other.removeprefix("i")), 0] == c1


def test_inspect_with_ids_from_elsewhere(
    in_built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing built here: the default folder is empty
    line = cli_error(["semantic-ids", "inspect", "i7", "--dataset", "synthetic"])
    assert "recloop semantic-ids build" in line
    out = cli_ok(
        ["semantic-ids", "inspect", "i7", "--dataset", "synthetic", "--ids", str(in_built)]
    )
    assert "depth 2" in out
    line = cli_error(["semantic-ids", "inspect", "i7", "--ids", str(tmp_path)])
    assert str(tmp_path) in line and "recloop semantic-ids build" in line
    line = cli_error(
        ["semantic-ids", "inspect", "50", "--ids", str(in_built)]
    )  # built on synthetic
    assert "--dataset synthetic" in line


def test_unknown_item_is_a_clean_error_with_title_hints(in_built: Path) -> None:
    from recloop.data.synthetic import SyntheticConfig, generate

    catalog = generate(SyntheticConfig()).dataset.catalog
    assert catalog is not None
    line = cli_error(["semantic-ids", "inspect", "i9999", "--dataset", "synthetic"])
    assert "'i9999'" in line and "titles containing" not in line
    word = catalog.title[3].split()[0]
    line = cli_error(["semantic-ids", "inspect", word.lower(), "--dataset", "synthetic"])
    assert f"titles containing {word.lower()!r}" in line and f"i3 ({catalog.title[3]})" in line


@pytest.mark.parametrize(
    ("toml", "options", "expected"),
    [
        ("[semantic_ids.rkmeans]\ncodebook_size = 1\n", [], "semantic_ids.rkmeans.codebook_size"),
        ('[semantic_ids]\ntokenizer = "rkmeans"\n', ["--levels", "0"], "--levels: field "),
        ("", ["--tokenizer", "kmeans"], "field 'semantic_ids.tokenizer'"),
        ("", ["--embedder", "bert"], "field 'semantic_ids.embedder.kind'"),
        ('[semantic_ids]\nsuffix_vocab = "many"\n', [], "semantic_ids.suffix_vocab"),
        ('[semantic_ids]\ncolour = "red"\n', [], "semantic_ids.colour"),
        ('tokenizer = "rkmeans"\n', [], "[semantic_ids] table"),
        ("[semantic_ids\n", [], "invalid TOML"),
    ],
)
def test_bad_config_names_the_field(
    tmp_path: Path, toml: str, options: list[str], expected: str
) -> None:
    config = tmp_path / "sid.toml"
    config.write_text(toml)
    args = ["semantic-ids", "build", "--dataset", "synthetic", "-c", str(config), *options]
    line = cli_error([*args, "--out", str(tmp_path / "out")])
    assert expected in line
    if not options:
        assert "sid.toml" in line
    assert not (tmp_path / "out").exists()  # nothing built


def test_bad_dataset_and_codebook_too_large(tmp_path: Path) -> None:
    config = tmp_path / "sid.toml"
    config.write_text('[semantic_ids.embedder]\nkind = "tfidf"\ndim = 4\n')
    build = ["semantic-ids", "build", "-c", str(config), "--out", str(tmp_path / "out")]
    assert "--dataset" in cli_error([*build, "--dataset", "netflix"])
    too_many = ["--tokenizer", "rkmeans", "--codebook-size", "1024"]  # synthetic has 500 items
    assert "codebook_size" in cli_error([*build, "--dataset", "synthetic", *too_many])
