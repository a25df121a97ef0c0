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


async def guarded(handler: Callable[[], Awaitable[Response]], error_body: ErrorBody = plain_error) -> Response:
    """Runs ``handler()``; maps ``HTTPError`` to its status, ``UserError`` (a check the model or data made) to
    400, ``QueueFullError`` to 503 (with ``Retry-After``) and anything else to 500, each as ``error_body``."""
    try:
        return await handler()
    except HTTPError as e:
        return json_response(error_body(e.status, e.message, e), e.status)
    except UserError as e:
        return json_response(error_body(400, str(e), None), 400)
    except QueueFullError as e:
        return json_response(error_body(503, f"too busy: {e}; retry later", None), 503, {"Retry-After": "1"})
    except Exception as e:  # a bug: report it, keep serving
        return json_response(error_body(500, f"internal error: {type(e).__name__}: {e}", None), 500)
