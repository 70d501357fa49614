"""TransformersLLM loads safetensors only: pickled weights (which run code when loaded) never."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recloop.generative.backends import GeneratorConfig, build_generator
from recloop.generative.llm import GenerationError, GenerationRequest, Message
from recloop.generative.local import TransformersLLM

from .test_local_llm import build_tiny_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed: `pip install 'recloop[llm]'`",
)


class _Marker:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def pickle_weights(folder: Path, marker: Path) -> None:
    """Replace the folder's safetensors weights with a pytorch_model.bin pickle."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    state["__marker__"] = _Marker(marker)  # type: ignore[assignment]
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_a_folder_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "pickled")
    marker = tmp_path / "unpickled"
    pickle_weights(folder, marker)
    with pytest.raises(GenerationError, match=r"no \.safetensors weights.*pytorch_model\.bin"):
        TransformersLLM(folder)
    config = GeneratorConfig(backend="transformers", model_path=str(folder))
    with pytest.raises(GenerationError, match="never pickled weights"):
        build_generator(config)
    assert not marker.exists()


def test_safetensors_are_loaded_and_a_pickle_beside_them_is_not(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "both")
    marker = tmp_path / "unpickled"
    (tmp_path / "copy").mkdir()
    pickled = build_tiny_model(tmp_path / "copy" / "model")
    pickle_weights(pickled, marker)
    (pickled / "pytorch_model.bin").rename(folder / "pytorch_model.bin")
    llm = TransformersLLM(folder, max_new_tokens=3)
    out = llm.generate(
        GenerationRequest(task="t", evidence={}, messages=(Message("user", "hi"),), max_tokens=3)
    )
    assert out.backend == "transformers" and out.completion_tokens >= 1
    assert not marker.exists()
