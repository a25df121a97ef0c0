"""Starting a service: port checks before a model is loaded, uvicorn in the foreground, and
``BackgroundServer`` (uvicorn on a thread, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import socket
import threading
import time

from reclm_jax.errors import UserError


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """``UserError`` when ``port`` is out of range or already taken on ``host``: found before a model is loaded
    (minutes, for a large one), instead of uvicorn's one log line after it."""
    if not 1 <= port <= 65535:
        raise UserError(f"{flag} must be from 1 to 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closing socket does not count
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e}); is another "
                            f"server running there? Choose another port") from None


def run_server(app, host: str, port: int, *, http: str = "auto", **uvicorn_kwargs) -> None:
    """uvicorn in the foreground until Ctrl-C; quiet (warnings only, no access log). ``app`` may also be an
    import string with ``factory=True`` and ``workers=N`` in ``uvicorn_kwargs``."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=http, **uvicorn_kwargs)


class BackgroundServer:
    """Runs an app with uvicorn on a thread: ``with BackgroundServer(app) as s: httpx.get(s.url + ...)``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                     access_log=False))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
