"""One small interface for every text generator, and the deterministic template default.

A caller describes what it wants as a :class:`GenerationRequest`: the ``task`` (what kind of
text), the structured ``evidence`` the text may use, and the rendered chat ``messages`` (the
prompt, with untrusted item and user text already delimited). A language-model backend reads
the messages; the :class:`TemplateGenerator` ignores them and renders the evidence through a
template registered for the task, so it can never say anything the evidence does not hold.

Backends:

- :class:`TemplateGenerator` (here): deterministic, grounded, free; the default.
- ``OpenAIChat`` (:mod:`recloop.generative.openai_chat`): any OpenAI-compatible server.
- ``TransformersLLM`` (:mod:`recloop.generative.local`): a local model path, GGUF included.

``hosted`` says whether text leaves this machine: callers must not put a user's personal data
in a request to a hosted backend without the user's generative consent (``contains_personal_data``
marks such requests, and :func:`check_consent` enforces it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from recloop.errors import RecloopError

Role = Literal["system", "user", "assistant"]
TemplateRenderer = Callable[[Mapping[str, Any]], str]


class GenerationError(RecloopError):
    """A backend could not produce text: unreachable server, timeout, budget spent, no template."""


class ConsentError(GenerationError):
    """A request with a user's personal data was about to go to a hosted backend without consent."""


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate.

    ``task`` names the kind of text ("explanation", "collection_title", ...); ``evidence`` is
    the structured ground truth the text may use; ``messages`` is the prompt for language-model
    backends. ``contains_personal_data`` marks prompts that carry a user's data.
    """

    task: str
    evidence: Mapping[str, Any]
    messages: tuple[Message, ...] = ()
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    timeout_s: float | None = None
    contains_personal_data: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """Text a backend produced, with what it cost."""

    text: str
    backend: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TextGenerator(Protocol):
    """What every backend offers."""

    name: str
    hosted: bool  # True when prompts leave this machine

    def generate(self, request: GenerationRequest) -> Generation:
        """Text for ``request``; raises :class:`GenerationError` when it cannot."""
        ...

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        """Sum of token log-probabilities of each continuation after ``messages``.

        Used for batched re-ranking; a backend that cannot score raises
        :class:`GenerationError`.
        """
        ...


@runtime_checkable
class BatchGenerator(Protocol):
    """A backend that decodes several requests together (the local ``transformers`` one)."""

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One :class:`Generation` per request, in order."""
        ...


def generate_many(
    generator: TextGenerator, requests: Sequence[GenerationRequest]
) -> list[Generation]:
    """Every request's generation: batched where the backend can, else one at a time."""
    if isinstance(generator, BatchGenerator):
        return list(generator.generate_batch(requests))
    return [generator.generate(request) for request in requests]


def check_consent(generator: TextGenerator, request: GenerationRequest, consent: bool) -> None:
    """Refuse to send a user's personal data to a hosted backend without generative consent."""
    if generator.hosted and request.contains_personal_data and not consent:
        raise ConsentError(
            f"backend {generator.name!r} is hosted and the user has not given generative "
            "consent; their data may not be sent to it"
        )


_TEMPLATES: dict[str, TemplateRenderer] = {}


def register_template(task: str) -> Callable[[TemplateRenderer], TemplateRenderer]:
    """Decorator: ``renderer(evidence) -> text`` becomes the template for ``task``."""

    def wrap(renderer: TemplateRenderer) -> TemplateRenderer:
        _TEMPLATES[task] = renderer
        return renderer

    return wrap


def template_tasks() -> list[str]:
    """Tasks that have a registered template."""
    return sorted(_TEMPLATES)


class TemplateGenerator:
    """The deterministic, grounded default: renders the evidence through the task's template.

    Templates are registered by the modules that define the tasks (explanations, collections,
    conversation answers) with :func:`register_template`; ``templates`` adds or overrides some
    for this generator only.
    """

    name = "template"
    hosted = False

    def __init__(self, templates: Mapping[str, TemplateRenderer] | None = None) -> None:
        self._own = dict(templates or {})

    def generate(self, request: GenerationRequest) -> Generation:
        renderer = self._own.get(request.task) or _TEMPLATES.get(request.task)
        if renderer is None:
            known = ", ".join(sorted({*self._own, *_TEMPLATES})) or "none"
            raise GenerationError(f"no template for task {request.task!r} (have: {known})")
        text = renderer(request.evidence)
        return Generation(text=text, backend=self.name, model="template")

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        raise GenerationError("the template generator cannot score text; configure an LLM")
