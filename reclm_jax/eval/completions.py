"""A client of an OpenAI-compatible ``/v1/completions`` endpoint (vLLM, ``reclm_jax.serve``), as the original
test client calls it: ``{"model", "prompt", "n": 1, "temperature": 0.0, "max_tokens"}``, no stop strings, the
answer is ``choices[0].text`` (audit B.4).

Unlike the original (which let any HTTP or JSON error escape and skip the sample, audit T7), every failure is
caught and reported per request: connection errors, timeouts (``timeout`` seconds per request), HTTP 5xx/408/429
and malformed bodies are retried ``retries`` times with backoff; other 4xx answers are not (the request itself
is wrong). ``map`` runs ``concurrency`` requests at once on threads and stops early once
``max_consecutive_failures`` requests in a row failed (the server is down or broken), so a dead server costs
seconds, not one timeout per sample.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Callable, Hashable, Iterable

import requests

from reclm_jax.errors import UserError

HEADERS = {"User-Agent": "Test Client"}  # the original's header


@dataclasses.dataclass(frozen=True)
class CompletionsConfig:
    base_url: str  # e.g. http://127.0.0.1:13579/v1
    model: str
    max_tokens: int = 1024
    timeout: float = 600.0
    retries: int = 2
    concurrency: int = 16
    max_consecutive_failures: int = 32  # 0: never stop early
    backoff: float = 0.5


class CompletionError(Exception):
    """One request failed for good; the message says how (kept in the sample's ``error``)."""


class ServerDown(UserError):
    """Too many requests in a row failed; answered samples are kept by the caller."""


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


class CompletionsClient:
    def __init__(self, cfg: CompletionsConfig):
        if cfg.concurrency < 1 or cfg.retries < 0 or cfg.timeout <= 0 or cfg.max_tokens < 1:
            raise UserError("--concurrency and --max_tokens must be >= 1, --retries >= 0 and --timeout > 0")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/")
        self._local = threading.local()  # a requests.Session is not thread-safe: one per worker thread
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self.succeeded = 0
        self.failed = 0

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(HEADERS)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def probe(self) -> list[str] | None:
        """``GET /models``: the served model ids, or None when the server answers without a usable list.
        Raises ``UserError`` when nothing listens at the address."""
        try:
            r = self._session().get(f"{self.url}/models", timeout=min(self.cfg.timeout, 10.0))
        except requests.RequestException as e:
            raise UserError(f"cannot reach the server at {self.cfg.base_url} ({type(e).__name__}: {e}); start it "
                            f"first (python -m reclm_jax.serve --model DIR --port 13579, or vLLM) and check "
                            f"--base-url") from None
        try:
            return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            return None

    def complete(self, prompt: str, extra: dict | None = None) -> str:
        """The greedy completion of ``prompt``; ``CompletionError`` once every attempt failed. ``extra``: more
        body keys (``reclm_constraint`` of a constrained evaluation)."""
        payload = {"model": self.cfg.model, "prompt": prompt, "n": 1, "temperature": 0.0,
                   "max_tokens": self.cfg.max_tokens, **(extra or {})}
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(min(self.cfg.backoff * 2 ** (attempt - 1), 10.0))
            try:
                r = self._session().post(f"{self.url}/completions", json=payload, timeout=self.cfg.timeout)
            except requests.Timeout:
                last = f"timed out after {self.cfg.timeout:g} s"
                continue
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code != 200:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if _retryable_status(r.status_code):
                    continue
                break
            try:
                text = r.json()["choices"][0]["text"]
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"malformed answer: {r.text[:200]!r}"
                continue
            if not isinstance(text, str):  # the original retried a None text
                last = f"choices[0].text is {type(text).__name__}, not a string"
                continue
            return text
        raise CompletionError(last)

    def map(self, jobs: Iterable[tuple],
            on_done: Callable[[Hashable, str | None, str | None], None]) -> None:
        """Completes every ``(key, prompt)`` or ``(key, prompt, extra body keys)``; ``on_done(key, text, error)`` runs in the calling thread as each
        finishes (text None and an error message on failure). Raises ``ServerDown`` after
        ``max_consecutive_failures`` failures in a row.

        The workers are daemon threads: after an early stop or Ctrl-C the requests still in flight are
        abandoned instead of holding the process until their time limit."""
        todo: queue.Queue = queue.Queue()
        jobs = list(jobs)
        for job in jobs:
            todo.put(job)
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                try:
                    key, prompt, *extra = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    text, error = self.complete(prompt, *extra), None
                except CompletionError as e:
                    text, error = None, str(e) or "failed"
                except Exception as e:  # a bug or a closed client: still one failed sample, never a hung run
                    text, error = None, f"{type(e).__name__}: {e}"
                results.put((key, text, error))

        for _ in range(min(self.cfg.concurrency, len(jobs))):
            threading.Thread(target=worker, daemon=True, name="completions").start()
        limit = self.cfg.max_consecutive_failures
        streak, last_error = 0, ""
        try:
            for _ in range(len(jobs)):
                key, text, error = results.get()
                if text is None:
                    self.failed += 1
                    streak += 1
                    last_error = error
                else:
                    self.succeeded += 1
                    streak = 0
                on_done(key, text, error)
                if limit and streak >= limit:
                    raise ServerDown(f"{streak} requests in a row to {self.cfg.base_url} failed (last: "
                                     f"{last_error}); the answers received so far are kept: fix the server "
                                     f"and run the same command again to resume")
        finally:
            stop.set()
