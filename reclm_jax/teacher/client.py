"""HTTP client of the teacher service with the same ``topk``/``ranking`` calls and results as ``Teacher``.

Hosts are tried in order (the first is the primary, the rest are backups, like the original's
``--backup_ip``); a host that refuses, times out or answers 5xx is skipped, and when every host failed the
round is retried after an exponential backoff. A 400 answer is the caller's mistake: it raises ``UserError``
at once, without retrying (so does any other 4xx but 408/429).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import requests

from reclm_jax.errors import UserError
from reclm_jax.teacher.connect import DEFAULT_PORT


class TeacherUnavailableError(UserError):
    """No host answered after all retries."""


def _base_url(host: str, port: int) -> str:
    host = host.strip().rstrip("/")
    if host.startswith(("http://", "https://")):
        return host if host.count(":") >= 2 else f"{host}:{port}"
    return f"http://{host}" if ":" in host else f"http://{host}:{port}"


class TeacherClient:
    def __init__(self, port: int = DEFAULT_PORT, hosts: str | Sequence[str] = "127.0.0.1", timeout: float = 30.0,
                 retries: int = 3, batch_size: int = 256, backoff: float = 0.2):
        """``hosts``: one host or a list (primary first; the original's ``--backup_ip``); an entry may carry
        its own ``:port``."""
        hosts = [hosts] if isinstance(hosts, str) else list(hosts)
        if not hosts:
            raise UserError("TeacherClient needs at least one host")
        self.urls = [_base_url(h, port) for h in hosts]
        self.timeout, self.retries, self.batch_size, self.backoff = timeout, retries, batch_size, backoff
        self._session = requests.Session()

    def _post(self, path: str, payload: dict) -> Any:
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            for url in self.urls:
                try:
                    r = self._session.post(url + path, json=payload, timeout=self.timeout)
                except requests.RequestException as e:
                    errors.append(f"{url}: {type(e).__name__}")
                    continue
                if r.status_code == 200:
                    return r.json()
                try:
                    message = r.json().get("error", r.text)
                except ValueError:
                    message = r.text
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    raise UserError(f"teacher at {url} rejected the request: {message}")
                errors.append(f"{url}: HTTP {r.status_code} {message}")
        raise TeacherUnavailableError(f"no teacher host answered {path} after {self.retries + 1} rounds "
                                      f"(last errors: {'; '.join(errors[-len(self.urls):])})")

    def _batched(self, path: str, key: str, n: int, build) -> list:
        out: list = []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            out.extend(self._post(path, build(start, stop))[key])
        return out

    def topk(self, histories: Sequence[Sequence[str]], k: int,
             target_categories: Sequence[str | None] | None = None,
             candidates: Sequence[Sequence[str] | None] | None = None,
             users: Sequence[str] | None = None) -> list[list[str]]:
        """As ``Teacher.topk``; ``users`` (optional) are sent for the service to check."""

        def build(a: int, b: int) -> dict:
            hist = [list(h) for h in histories[a:b]]
            body: dict = {"item_lists": hist, "item_lengths": [len(h) for h in hist], "k": k, "immediately": 1}
            if users is not None:
                body["users"] = list(users[a:b])
            if target_categories is not None:
                body["target_category"] = list(target_categories[a:b])
            if candidates is not None:
                body["candidate_item_lists"] = [None if c is None else list(c) for c in candidates[a:b]]
            return body

        return self._batched("/inference", "inference", len(histories), build)

    def ranking(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                users: Sequence[str] | None = None) -> list[list[int]]:
        """As ``Teacher.ranking``."""

        def build(a: int, b: int) -> dict:
            hist = [list(h) for h in histories[a:b]]
            body: dict = {"item_lists": hist, "item_lengths": [len(h) for h in hist],
                          "candidate_item_lists": [list(c) for c in candidates[a:b]], "immediately": 1}
            if users is not None:
                body["users"] = list(users[a:b])
            return body

        return self._batched("/ranking", "ranking", len(histories), build)

    def health(self) -> dict:
        """GET /health of the first host that answers."""
        for url in self.urls:
            try:
                r = self._session.get(url + "/health", timeout=self.timeout)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                continue
        raise TeacherUnavailableError(f"no teacher host answered /health ({', '.join(self.urls)})")

    def close(self) -> None:
        self._session.close()
