"""The worker's text generator and the generative-consent rule, shared by every route that
generates text (explanations, conversations, LLM re-ranking, gap-filling content)."""

from __future__ import annotations

import threading
from typing import Any

from recloop.generative.llm import TextGenerator

GENERATOR = "generative.generator"  # its key in ServiceState.extensions
_BUILD = threading.Lock()


def text_generator(state: Any) -> TextGenerator:
    """The worker's text generator, built once from ``RECLOOP_LLM_*`` (the template if unset)."""
    found = state.extensions.get(GENERATOR)
    if found is None:
        with _BUILD:
            found = state.extensions.get(GENERATOR)
            if found is None:
                from recloop.generative.backends import GeneratorConfig, build_generator

                found = build_generator(GeneratorConfig.from_env())
                state.extensions[GENERATOR] = found
    generator: TextGenerator = found
    return generator


def generative_consent(state: Any, user_id: str) -> bool:
    """Whether the user allows their data in prompts (``PUT /v1/users/{id}/consent``)."""
    return bool(state.consent.get(user_id).generative)
