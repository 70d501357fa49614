"""The generative module: language models that explain, converse, onboard and create content.

Every piece of text is generated from structured evidence, checked before anyone sees it, and
labelled as generated. :mod:`recloop.generative.llm` holds the one interface every backend
implements (an OpenAI-compatible server, a local ``transformers`` model, or the deterministic
template generator that is the default).
"""
