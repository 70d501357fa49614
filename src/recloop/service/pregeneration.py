"""Explanations of served slates, written to the cache before anyone asks for them.

With a language model behind ``GET /v1/explanations/{slate_id}/{position}``
(``RECLOOP_LLM_*``), the first request for an item waits for the model. Each worker's
:class:`Pregenerator` takes the slates the recommendations route serves
(:meth:`Pregenerator.offer`: a bounded queue that never blocks; a full queue drops the slate
and counts it) and, on its own thread, explains the first ``RECLOOP_EXPLAIN_PREGENERATE``
positions of each exactly as the route would (:func:`pregenerate_slate`): the same evidence
(:func:`~recloop.service.routes_explain.slate_evidence`), policy, consent rule, generator,
checker, cache and user scope, so the request finds the text under the key it looks up. A
slate's items go to the model together (:func:`~recloop.generative.budget.pregenerate`, which
a local model decodes as one batch).

Nothing is done when pregeneration is off (0 positions), when the generator is the template
(instant on demand), for users the policy keeps on the template, for erased users, with a
hosted backend for users without generative consent (no prompt leaves ahead of a request),
or with no active model. A request for an item the thread is explaining at that moment waits
for it (:meth:`Pregenerator.wait_for`) instead of generating the same text twice.

An erasure landing while a slate is being explained makes its cache writes no-ops: Redis
refuses writes of a forgotten user's keys (:meth:`~recloop.store.cache.Cache.forget`), and
the in-process cache's invalidation voids the token taken before any of the user's data was
read; the purge finds whatever got in before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from recloop.errors import ConfigError
from recloop.generative.budget import PregenerationReport, pregenerate
from recloop.generative.llm import TemplateGenerator
from recloop.service.generation import GENERATOR, generative_consent, text_generator
from recloop.store.slates import SlateRecord

if TYPE_CHECKING:
    from recloop.service.state import ServiceState

log = logging.getLogger("recloop.service.pregeneration")

METRIC_PREFIX = "recloop_explain_pregeneration"
COUNTERS = {
    "slates_offered": "Served slates queued for pregeneration",
    "slates_dropped": "Served slates dropped because the pregeneration queue was full",
    "slates_skipped": "Queued slates not explained: template generator, policy, erased user, "
    "hosted backend without consent, no model, or no item left in the catalogue",
    "slates_failed": "Queued slates whose pregeneration raised",
    "items_explained": "Explanations generated ahead of requests (template fallbacks included)",
    "items_already_cached": "Items whose explanation was already in the cache",
    "items_fallback": "Pregenerated explanations the template wrote (unfaithful text, timeout)",
    "seconds": "Seconds spent explaining slates ahead of requests",
}
GAUGES = {"queued": "Slates waiting for pregeneration"}
_TEMPLATE = TemplateGenerator.name


def pregenerate_slate(
    state: ServiceState, slate: SlateRecord, positions: int
) -> PregenerationReport | str:
    """Explain the first ``positions`` items of ``slate`` into the explanation cache as
    ``GET /v1/explanations`` would; the report, or why nothing was done."""
    from recloop.service import routes_explain as route  # the route imports the state

    token = state.cache.token()  # before reading any of the user's data: see the module doc
    generator = text_generator(state)
    if generator.name == _TEMPLATE:
        return "template generator"
    if slate.user_id in state.erased:
        return "erased user"
    model = state.models.current()
    if model is None:
        return "no active model"
    consent = generative_consent(state, slate.user_id)
    if generator.hosted and not consent:
        # even evidence without history says what the user was shown: nothing leaves ahead
        # of a request (the route still sends such evidence when the user asks)
        return "hosted backend without generative consent"
    parts = route.explain_components(state)
    shown = [imp for imp in slate.items if imp.position < positions]
    n_events, evidences = route.slate_evidence(state, model, slate, shown)
    decision = parts.settings.policy.decide(n_events=n_events, segment=slate.segment)
    if not decision.use_llm:
        return f"policy: {decision.reason}"  # the route answers with the template, uncached
    if not evidences:
        return "no item in the catalogue"
    explainer = route.slate_explainer(state, parts, slate.user_id, token=token)
    return pregenerate([list(evidences.values())], explainer, use_llm=True, consent=consent)


class Pregenerator:
    """One worker's background pregeneration: a bounded queue of served slates and a thread
    that explains their first ``positions`` items (see the module docstring)."""

    def __init__(self, *, positions: int = 3, max_queue: int = 256) -> None:
        if positions < 0:
            raise ConfigError(f"positions must be >= 0, not {positions}")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be at least 1, not {max_queue}")
        self.positions = positions
        self.max_queue = max_queue
        self._queue: queue.Queue[SlateRecord] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # queued or being explained
        self._current: str | None = None  # the slate_id being explained now
        self._counts = dict.fromkeys(COUNTERS, 0.0)
        self._state: ServiceState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.positions > 0

    def offer(self, slate: SlateRecord) -> bool:
        """Queue ``slate`` if pregeneration may help; never blocks: a full queue drops it
        (counted). Whether it was queued; never before :meth:`start` or after :meth:`close`."""
        state = self._state
        if state is None or self._thread is None or not slate.items or self._stop.is_set():
            return False
        generator = state.extensions.get(GENERATOR)
        if generator is not None and generator.name == _TEMPLATE:
            return False  # the template is instant on demand
        with self._lock:
            try:
                self._queue.put_nowait(slate)
            except queue.Full:
                self._counts["slates_dropped"] += 1
                return False
            self._counts["slates_offered"] += 1
            self._pending += 1
        return True

    def start(self, state: ServiceState) -> None:
        """Start the thread, explaining for ``state`` (the worker's :class:`ServiceState`)."""
        self._state = state
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="explain-pregen", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the slate in hand; queued slates are dropped (a cache warm,
        nothing is lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued slate is done; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def wait_for(self, slate_id: str, position: int, timeout_s: float | None) -> bool:
        """Wait while this worker explains ``position`` of slate ``slate_id`` (at most
        ``timeout_s``; None: until done), so a request for it reads the cache instead of
        generating the same text a second time. Whether it waited."""
        if position >= self.positions:
            return False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited = False
        with self._idle:
            while self._current == slate_id:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                waited = True
                self._idle.wait(left)
        return waited

    def stats(self) -> dict[str, float]:
        """The counters (:data:`COUNTERS`) and the queue's length now (``queued``)."""
        with self._lock:
            return {**self._counts, "queued": float(self._queue.qsize())}

    def explain(self, slate: SlateRecord) -> PregenerationReport | str:
        """Pregenerate one slate now, in this thread, counting the outcome (after
        :meth:`start`)."""
        if self._state is None:
            raise RuntimeError("start the pregenerator with the service state first")
        started = time.perf_counter()
        try:
            outcome = pregenerate_slate(self._state, slate, self.positions)
        except Exception:
            with self._lock:
                self._counts["slates_failed"] += 1
            raise
        with self._lock:
            if isinstance(outcome, str):
                self._counts["slates_skipped"] += 1
            else:
                self._counts["items_explained"] += outcome.generated
                self._counts["items_already_cached"] += outcome.already_cached
                self._counts["items_fallback"] += outcome.fallbacks
                self._counts["seconds"] += time.perf_counter() - started
        return outcome

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                slate = self._queue.get(timeout=0.25)
            except queue.Empty:
                continue
            with self._lock:
                self._current = slate.slate_id
            try:
                self.explain(slate)
            except Exception:  # the store or the backend failed: the route will try again
                log.exception("pregenerating the explanations of a slate failed")
            finally:
                with self._idle:
                    self._current = None
                    self._pending -= 1
                    self._idle.notify_all()
