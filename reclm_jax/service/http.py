"""JSON bodies and errors of the services: every request handler runs under ``guarded``, so any exception
becomes a JSON error response (4xx for the client's mistakes, 503 for a full queue, 500 for a bug) and the
server keeps serving. Each service chooses the shape of its error body (``error_body``): the teacher answers
``{"error": "..."}`` (its clients read that), the OpenAI-compatible server OpenAI's ``{"error": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from reclm_jax.errors import UserError
from reclm_jax.service.batcher import QueueFullError


class HTTPError(Exception):
    """A request the service refuses: ``status``, a message for the client and, optionally, the request field
    it is about (``param``) and a machine-readable ``code``."""

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        if status is not None:
            self.status = status


class BadRequest(HTTPError):
    status = 400


class NotFound(HTTPError):
    status = 404


# (status, message, the HTTPError or None) -> the JSON body of the error response
ErrorBody = Callable[[int, str, "HTTPError | None"], Any]


def plain_error(status: int, message: str, err: HTTPError | None) -> dict:
    return {"error": message}


def json_response(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    """Compact JSON (``allow_nan=False``: a NaN is a bug to report, never invalid JSON on the wire)."""
    return Response(json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
                    status_code=status, media_type="application/json", headers=headers)


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON; ``BadRequest`` for malformed JSON (never a 422 or a crash)."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON: {e}") from None


def error_of(e: Exception) -> tuple[int, str, HTTPError | None]:
    """(status, message, the HTTPError or None) of an exception: ``HTTPError`` its own status, ``UserError`` (a
    check the model or data made) 400, ``QueueFullError`` 503, anything else (a bug) 500."""
    if isinstance(e, HTTPError):
        return e.status, e.message, e
    if isinstance(e, UserError):
        return 400, str(e), None
    if isinstance(e, QueueFullError):
        return 503, f"too busy: {e}; retry later", None
    return 500, f"internal error: {type(e).__name__}: {e}", None


async def guarded(handler: Callable[[], Awaitable[Response]], error_body: ErrorBody = plain_error) -> Response:
    """Runs ``handler()``; any exception becomes the JSON error response of ``error_of`` (503 with
    ``Retry-After``), shaped by ``error_body``."""
    try:
        return await handler()
    except Exception as e:  # a bug too: report it, keep serving
        status, message, err = error_of(e)
        return json_response(error_body(status, message, err), status,
                             {"Retry-After": "1"} if status == 503 else None)
