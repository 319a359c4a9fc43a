"""The simulated expert: an OpenAI-compatible HTTP server that stands in for an LLM judge, offline.

It answers the judge's validation prompts from a labelled data file (CLINC150 ``data_full.json``, or CSV /
JSONL with ``text``, ``label``), reaching each verdict ONLY from what the request carries: it parses the
delimited ``<text>`` block and the proposed ``<label>`` out of the prompt, unescapes them exactly as the
judge escaped them, and looks the text's true label up in its file. It never sees the caller's objects, so
the prompt is really exercised end to end.

Knobs make it a realistic, misbehaving endpoint for the demo, benchmarks and reliability tests:
``error_rate`` (wrong verdicts, deterministic per (text, label) like a temperature-0 model), ``latency_ms``
(+ ``latency_jitter_ms``), and failure injection, random (``fail_rate`` over ``failures``) or scripted
(:meth:`SimulatedExpert.fail_next`, :meth:`SimulatedExpert.fail_always`): ``500``, ``503``, ``429``,
``timeout`` (hangs for ``hang_s``) and ``garbage`` (HTTP 200 with an unusable answer). It honours
``response_format`` (JSON when asked), returns ``usage`` token counts (word-piece estimate) and, when asked,
``logprobs`` for the answer token.

It also answers the two generative requests, recognised by the prompt's ``<task>`` block, in an honest,
offline way (it is not a language model and invents nothing):

- ``generate-examples`` (:meth:`Judge.generate_examples`): real texts of the asked label from its file, in a
  fixed shuffled order per label, never from the held-out splits (``holdout_splits``, by default CLINC150's
  ``test`` and ``oos_test``) nor the ``holdout`` texts, and none of the prompt's ``<avoid>`` texts. A label
  the file does not have gets an empty list (the judge reports it as an unusable answer). With
  ``error_rate`` > 0, that share of the examples (deterministic per text) is a text of another label, like
  an LLM writing off-class examples.
- ``propose-class`` (:meth:`Judge.propose_class`): the majority label, in its file, of the group's texts,
  with a templated description; when none of the texts is in its file, the group's two commonest words.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Use from async code ``async with SimulatedExpert(path) as sim: sim.base_url`` or from sync code
``sim.start_in_thread()`` ... ``sim.stop()``; on the command line ``driftlabel judge-sim --data FILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from aiohttp import web

from driftlabel.judge.data import normalise_text, read_labelled_rows
from driftlabel.judge.errors import JudgeDataError, JudgeError
from driftlabel.judge.parse import normalise_label_name
from driftlabel.judge.prompts import (
    TASK_CHOOSE,
    TASK_CHOOSE_BATCH,
    TASK_GENERATE,
    TASK_PROPOSE,
    TASK_VALIDATE_BATCH,
    extract_block,
    extract_blocks,
    task_of,
)

__all__ = ["DEFAULT_HOLDOUT_SPLITS", "FAILURE_KINDS", "SimulatedExpert"]

log = logging.getLogger(__name__)

_ITEM = re.compile(r"<item>(.*?)</item>", re.DOTALL)

FAILURE_KINDS = ("500", "503", "429", "timeout", "garbage")
#: splits of a split-tagged file (CLINC150) never handed out as generated examples: they score the model
DEFAULT_HOLDOUT_SPLITS = ("test", "oos_test")
_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "can",
        "could",
        "do",
        "does",
        "for",
        "from",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "please",
        "the",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    }
)
_GARBAGE = (
    "Hmm, it depends on the context.",
    '{"valid": "maybe"}',
    "",
    "Yes and no.",
    '{"verdict": tru',
)
_TOKEN = re.compile(r"\w+|[^\w\s]")

LabelledData = str | os.PathLike[str] | Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


def _count_tokens(text: str) -> int:
    """A rough token count (words and punctuation), enough for usage accounting."""
    return len(_TOKEN.findall(text))


def _rows(data: LabelledData) -> list[tuple[str, str, str | None]]:
    """(text, label, split) rows of the expert's data; split is None unless the file has splits."""
    if isinstance(data, (str, os.PathLike)):
        return [(r.text, r.label, r.split) for r in read_labelled_rows(data)]
    if isinstance(data, Mapping):
        return [
            (text, lab, None)
            for text, labels in data.items()
            for lab in ([labels] if isinstance(labels, str) else list(labels))
        ]
    return [(text, label, None) for text, label in data]


def _index(rows: Iterable[tuple[str, str, str | None]]) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for text, label, _ in rows:
        index.setdefault(normalise_text(text), set()).add(label)
    if not index:
        raise JudgeDataError("the simulated expert needs at least one labelled text")
    return index


class SimulatedExpert:
    """An OpenAI-compatible chat endpoint on loopback that judges from a labelled file (see module doc)."""

    def __init__(
        self,
        data: LabelledData,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "simulated-expert",
        error_rate: float = 0.0,
        latency_ms: float = 0.0,
        latency_jitter_ms: float = 0.0,
        fail_rate: float = 0.0,
        failures: Iterable[str] = ("500", "429", "timeout", "garbage"),
        hang_s: float = 30.0,
        seed: int = 0,
        api_key: str | None = None,
        holdout_splits: Collection[str] = DEFAULT_HOLDOUT_SPLITS,
        holdout: Iterable[str] = (),
    ) -> None:
        if not 0.0 <= error_rate <= 1.0 or not 0.0 <= fail_rate <= 1.0:
            raise JudgeDataError("error_rate and fail_rate must be within [0, 1]")
        if latency_ms < 0 or latency_jitter_ms < 0 or hang_s < 0:
            raise JudgeDataError("latency_ms, latency_jitter_ms and hang_s must be >= 0")
        kinds = tuple(failures)
        unknown = [k for k in kinds if k not in FAILURE_KINDS]
        if unknown or (fail_rate > 0 and not kinds):
            raise JudgeDataError(f"unknown failure kinds {unknown}; choose from {', '.join(FAILURE_KINDS)}")
        rows = _rows(data)
        self._index = _index(rows)
        # texts it may hand out as generated examples: never a held-out split or a held-out text
        self.holdout_splits = frozenset(holdout_splits)
        held = {normalise_text(t) for t in holdout}
        pool: dict[str, dict[str, str]] = {}
        for text, label, split in rows:
            if split in self.holdout_splits or normalise_text(text) in held:
                continue
            pool.setdefault(normalise_label_name(label), {}).setdefault(normalise_text(text), text)
        self._pool: dict[str, list[str]] = {}
        for key, texts in pool.items():
            ordered = list(texts.values())
            random.Random(f"{seed}\x1f{key}").shuffle(ordered)  # a fixed, representative order per label
            self._pool[key] = ordered
        self.host = host
        self.port = port
        self.model = model
        self.error_rate = error_rate
        self.latency_ms = latency_ms
        self.latency_jitter_ms = latency_jitter_ms
        self.fail_rate = fail_rate
        self.failures = kinds
        self.hang_s = hang_s
        self.seed = seed
        self._api_key = api_key
        self._rng = random.Random(seed)
        self._forced: deque[str] = deque()
        self._always: str | None = None
        self.counts: Counter[str] = Counter()
        self.active = 0  # chat requests being handled right now
        self.max_active = 0  # the most ever handled at once (shows the caller's concurrency bound)
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        """The ``/v1`` base URL to give the judge (``DRIFTLABEL_JUDGE_BASE_URL``)."""
        if not self.port:
            raise JudgeError("the simulated expert is not started yet; start() it first")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def n_texts(self) -> int:
        return len(self._index)

    def fail_next(self, kind: str, count: int = 1) -> None:
        """Make the next ``count`` chat requests fail with ``kind`` (one of :data:`FAILURE_KINDS`)."""
        if kind not in FAILURE_KINDS:
            raise JudgeDataError(f"unknown failure kind {kind!r}; choose from {', '.join(FAILURE_KINDS)}")
        self._forced.extend([kind] * count)

    def fail_always(self, kind: str | None) -> None:
        """Fail every chat request with ``kind`` until called again with None."""
        if kind is not None and kind not in FAILURE_KINDS:
            raise JudgeDataError(f"unknown failure kind {kind!r}; choose from {', '.join(FAILURE_KINDS)}")
        self._always = kind

    def true_labels(self, text: str) -> set[str]:
        """The labels the data file gives ``text`` (empty when unknown)."""
        return set(self._index.get(normalise_text(text), ()))

    # ------------------------------------------------------------------ lifecycle (async)

    async def start(self) -> SimulatedExpert:
        """Start serving on ``host:port`` (port 0 picks a free one, kept for later restarts)."""
        if self._runner is not None:
            return self
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, shutdown_timeout=0.5, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise JudgeError(
                f"simulated expert cannot listen on {self.host}:{self.port} ({exc}); pick another --port"
            ) from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._closing = asyncio.Event()
        self._runner = runner
        log.info("simulated expert serving %d texts at %s", len(self._index), self.base_url)
        return self

    async def close(self) -> None:
        """Stop serving; hung ("timeout") requests are released at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> SimulatedExpert:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ lifecycle (sync, own thread)

    def start_in_thread(self, timeout_s: float = 10.0) -> SimulatedExpert:
        """Serve from a background thread with its own event loop (for sync callers)."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="simulated-expert", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise JudgeError(f"simulated expert did not start within {timeout_s}s")
        if errors:
            self._thread = None
            self._thread_loop = None
            raise errors[0]
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._thread = None
        self._thread_loop = None

    def __enter__(self) -> SimulatedExpert:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "texts": len(self._index)})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "driftlabel"}],
            }
        )

    def _pick_failure(self) -> str | None:
        if self._forced:
            return self._forced.popleft()
        if self._always is not None:
            return self._always
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            return self._rng.choice(self.failures)
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._handle_chat(request)
        finally:
            self.active -= 1

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        if self._api_key is not None and not hmac.compare_digest(
            request.headers.get("Authorization", ""), f"Bearer {self._api_key}"
        ):
            return _error(401, "invalid API key", "invalid_request_error")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "request needs a 'messages' list", "invalid_request_error")
        if body.get("stream"):
            return _error(
                400, "the simulated expert does not stream; send stream=false", "invalid_request_error"
            )
        delay = self.latency_ms + (
            self._rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0
        )
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        failure = self._pick_failure()
        if failure is not None:
            self.counts[f"fail_{failure}"] += 1
            if failure in ("500", "503"):
                return _error(int(failure), "simulated server error", "server_error")
            if failure == "429":
                return _error(429, "simulated rate limit", "rate_limit_error", headers={"Retry-After": "0"})
            if failure == "timeout":
                closing = self._closing
                if closing is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(closing.wait(), self.hang_s)
                return _error(504, "simulated timeout", "server_error")
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        content, kind = self._answer(prompt, body.get("response_format"))
        if isinstance(content, web.Response):
            return content
        if failure == "garbage":
            content = self._rng.choice(_GARBAGE)
            kind = "garbage"
        self.counts[kind] += 1
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in messages)
        completion_tokens = max(1, _count_tokens(content))
        self.counts["tokens"] += prompt_tokens + completion_tokens  # the usage reported, every kind of call
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and kind in ("yes", "no"):
            # the answer token with a probability that reflects the configured error rate
            p = min(max(1.0 - self.error_rate, 1e-6), 0.999)
            word = {"yes": "true", "no": "false"}[kind] if content.startswith("{") else kind
            choice["logprobs"] = {
                "content": [{"token": word, "logprob": math.log(p), "bytes": None, "top_logprobs": []}]
            }
        return web.json_response(
            {
                "id": f"chatcmpl-sim-{self.counts['requests']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model") or self.model),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def generatable(self, label: str) -> list[str]:
        """The texts it would hand out as generated examples of ``label`` (held-out ones excluded)."""
        return list(self._pool.get(normalise_label_name(label), ()))

    def _generate(self, prompt: str) -> tuple[str, str]:
        """Examples of the asked label: real texts of it from the file, minus held-out and avoided ones."""
        label = extract_block(prompt, "label") or ""
        try:
            n = max(1, min(int(extract_block(prompt, "count") or 5), 200))
        except ValueError:
            n = 5
        avoid = {normalise_text(a) for a in extract_blocks(prompt, "avoid")}
        key = normalise_label_name(label)
        texts = [t for t in self._pool.get(key, ()) if normalise_text(t) not in avoid]
        if self.error_rate > 0 and texts:
            texts = [self._maybe_off_class(key, t, avoid) for t in texts[:n]]
        return json.dumps({"examples": texts[:n]}), "generate"

    def _maybe_off_class(self, key: str, text: str, avoid: set[str]) -> str:
        """With probability ``error_rate`` (deterministic per text), a text of another label instead.

        Like an LLM that writes some examples that do not belong to the class, so that benchmarks see
        synthetic-example noise at the same rate as verdict noise.
        """
        seed_text = f"{self.seed}\x1fexample\x1f{key}\x1f{normalise_text(text)}"
        digest = hashlib.sha256(seed_text.encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.error_rate:
            return text
        others = sorted(k for k in self._pool if k != key and self._pool[k])
        if not others:
            return text
        other = self._pool[others[int.from_bytes(digest[8:16], "big") % len(others)]]
        pick = other[int.from_bytes(digest[16:24], "big") % len(other)]
        if normalise_text(pick) in avoid:
            return text
        self.counts["off_class_examples"] += 1
        return pick

    def _propose(self, prompt: str) -> tuple[str, str]:
        """A name for a group: the majority label of its texts in the file (else its commonest words)."""
        items = extract_blocks(prompt, "item")
        votes: Counter[str] = Counter()
        for item in items:
            for lab in self._index.get(normalise_text(item), ()):
                votes[lab] += 1
        if votes:
            name = min(votes, key=lambda lab: (-votes[lab], lab))
            words = name.replace("_", " ").replace("-", " ")
            desc = f"Texts about {words}, such as: {items[0][:120]}" if items else f"Texts about {words}."
        else:
            counts = Counter(
                w
                for it in items
                for w in re.findall(r"[a-z]+", it.lower())
                if w not in _STOPWORDS and len(w) > 2
            )
            top = [w for w, _ in counts.most_common(2)] or ["unnamed"]
            name = "_".join(top)
            desc = f"Texts that mention {' and '.join(top)}."
        return json.dumps({"name": name, "description": desc}), "propose"

    def _choose(self, prompt: str) -> tuple[Any, str]:
        """``{"choice": N}``: the first candidate the file gives the text, 0 for none. With ``error_rate``
        that share of answers (deterministic per text) is wrong: another candidate, or none."""
        labels = extract_blocks(prompt, "label")
        texts = extract_blocks(prompt, "text")
        if not labels or len(texts) != 1:
            return _error(
                400, "a choose prompt needs candidate <label> blocks and one <text>", "invalid_request_error"
            ), ""
        return json.dumps({"choice": self._pick(texts[0], labels)}), "choose"

    def _choose_batch(self, prompt: str) -> tuple[Any, str]:
        """``{"choices": [{"item": i, "choice": N}, ...]}`` for a batch prompt: each ``<item>`` answered as
        a single choose prompt would be (the same deterministic errors per text)."""
        items = _ITEM.findall(prompt)  # raw (escaped) blocks: no text can close one early
        answers = []
        for i, raw in enumerate(items, start=1):
            cands, texts = extract_blocks(raw, "cand"), extract_blocks(raw, "text")
            if not cands or len(texts) != 1:
                return _error(
                    400, f"batch item {i} needs <cand> blocks and one <text>", "invalid_request_error"
                ), ""
            answers.append({"item": i, "choice": self._pick(texts[0], cands)})
        if not answers:
            return _error(400, "a batch choose prompt needs <item> blocks", "invalid_request_error"), ""
        return json.dumps({"choices": answers}), "choose"

    def _pick(self, text: str, labels: list[str]) -> int:
        truth = self._index.get(normalise_text(text), set())
        pick = next((n for n, lab in enumerate(labels, start=1) if lab in truth), 0)
        if self.error_rate > 0:
            digest = hashlib.sha256(f"{self.seed}\x1f{normalise_text(text)}\x1fchoose".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < self.error_rate:
                pick = next((n for n in range(1, len(labels) + 1) if n != pick), 0)
                self.counts["flipped"] += 1
        return pick

    def _validate_batch(self, prompt: str) -> tuple[Any, str]:
        """``{"verdicts": [{"item": i, "valid": b}, ...]}`` for a batch of yes/no questions: each ``<item>``
        answered as the single question would be (the same deterministic errors per text and label)."""
        items = _ITEM.findall(prompt)
        answers = []
        for i, raw in enumerate(items, start=1):
            cands, texts = extract_blocks(raw, "cand"), extract_blocks(raw, "text")
            if len(cands) != 1 or len(texts) != 1:
                return _error(
                    400, f"batch item {i} needs one <cand> and one <text>", "invalid_request_error"
                ), ""
            answers.append({"item": i, "valid": self._verdict(texts[0], cands[0])})
        if not answers:
            return _error(400, "a batch validate prompt needs <item> blocks", "invalid_request_error"), ""
        return json.dumps({"verdicts": answers}), "validate_batch"

    def _verdict(self, text: str, label: str) -> bool:
        """Is ``label`` right for ``text`` (by the file)? Flipped for ``error_rate`` of the pairs."""
        valid = label in self._index.get(normalise_text(text), set())
        if self.error_rate > 0:
            digest = hashlib.sha256(f"{self.seed}\x1f{normalise_text(text)}\x1f{label}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < self.error_rate:
                valid = not valid
                self.counts["flipped"] += 1
        return valid

    def _answer(self, prompt: str, response_format: Any) -> tuple[Any, str]:
        """(content, kind) for a judge prompt, or (error response, "") when it is not one."""
        task = task_of(prompt)
        if task == TASK_GENERATE:
            return self._generate(prompt)
        if task == TASK_PROPOSE:
            return self._propose(prompt)
        if task == TASK_CHOOSE:
            return self._choose(prompt)
        if task == TASK_CHOOSE_BATCH:
            return self._choose_batch(prompt)
        if task == TASK_VALIDATE_BATCH:
            return self._validate_batch(prompt)
        if task is not None:
            return _error(400, f"unknown <task> {task[:40]!r}", "invalid_request_error"), ""
        label = extract_block(prompt, "label")
        texts = extract_blocks(prompt, "text")
        if label is None:
            return _error(
                400,
                "no single <label> block: the simulated expert answers only driftlabel judge prompts",
                "invalid_request_error",
            ), ""
        if not texts:  # a describe prompt: label + examples
            examples = extract_blocks(prompt, "example")
            words = label.replace("_", " ").replace("-", " ")
            desc = f"Texts about {words}."
            if examples:
                desc = f"Texts about {words}, for example: {examples[0][:120]}"
            return desc, "describe"
        if len(texts) > 1:
            return _error(400, "ambiguous prompt: more than one <text> block", "invalid_request_error"), ""
        valid = self._verdict(texts[0], label)
        fmt = response_format.get("type") if isinstance(response_format, dict) else None
        if fmt in ("json_schema", "json_object"):
            return json.dumps({"valid": valid}), "yes" if valid else "no"
        return ("yes" if valid else "no"), "yes" if valid else "no"


def _error(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An OpenAI-style error body, so the openai client raises the matching exception class."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}},
        status=status,
        headers=dict(headers or {}),
    )
