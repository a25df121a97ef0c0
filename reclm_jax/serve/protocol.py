"""Request validation: an OpenAI ``/v1/completions`` or ``/v1/chat/completions`` body -> ``ParsedRequest``.

Every mistake is a ``BadRequest`` whose message and ``param`` name the field. Fields the server does not know
are ignored (clients send many); known fields that would change the output in a way this server cannot honour
(``echo``, ``logit_bias``, penalties, ``best_of`` > n, tools, a JSON ``response_format``) are refused rather than
silently ignored. ``null`` always means "the default". Numbers must be JSON numbers (integers for integer
fields): no strings, no booleans.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, Sequence

from reclm_jax.errors import UserError
from reclm_jax.service.http import BadRequest, NotFound
from reclm_jax.serve.config import MAX_TOP_LOGPROBS, ServeConfig
from reclm_jax.serve.constraint import parse_constraint

MAX_STOP_STRINGS = 16
SAMPLING_EPS = 1e-5  # temperatures below this are greedy decoding (vLLM's rule)
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class ModelInfo(Protocol):
    """What validation needs to know about the served model (``engine.Engine`` provides it)."""

    vocab_size: int
    max_model_len: int
    catalogue: Any  # a decoding.ConstrainedCatalogue (``--constrain-data``) or None

    def encode(self, text: str, add_special_tokens: bool | None) -> list[int]: ...

    def render_chat(self, messages: list[dict], add_generation_prompt: bool,
                    continue_final_message: bool) -> str: ...


@dataclasses.dataclass(frozen=True)
class Params:
    """The sampling and output settings of one request (shared by all its prompts and choices)."""

    n: int = 1
    temperature: float = 1.0  # 0 (or < SAMPLING_EPS): greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (-1 in the request is normalised to 0)
    max_tokens: tuple[int, ...] = ()  # one per prompt, resolved against the context
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and k alternatives per token
    skip_special_tokens: bool = True
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    kind: str  # "completion" | "chat"
    model: str
    prompts: tuple[tuple[int, ...], ...]
    params: Params
    constraint: Any = None  # a decoding.ListConstraint for every row (the "reclm_constraint" key), or None


# -- field readers --------------------------------------------------------------------------------------------
def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _bad(field: str, what: str, value: Any) -> BadRequest:
    shown = repr(value) if not isinstance(value, (list, dict)) or len(repr(value)) < 60 else _type_name(value)
    return BadRequest(f"'{field}' must be {what}, got {shown}", param=field)


def get_int(body: dict, field: str, default, lo: int | None = None, hi: int | None = None):
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(field, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"from {lo} to {hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None
                                                                             else f"<= {hi}")
        raise _bad(field, f"an integer {rng}", v)
    return v


def get_float(body: dict, field: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(field, "a number", v)
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(field, f"a number {'>' if lo_open else '>='} {lo} and <= {hi}", v)
    return float(v)


def get_bool(body: dict, field: str, default: bool | None) -> bool | None:
    v = body.get(field)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(field, "a boolean", v)
    return v


def _refuse_unsupported(body: dict) -> None:
    """Known OpenAI/vLLM fields whose non-default values this server cannot honour."""
    checks = {
        "echo": lambda v: v is False, "suffix": lambda v: v == "", "logit_bias": lambda v: v == {},
        "presence_penalty": lambda v: v == 0, "frequency_penalty": lambda v: v == 0,
        "repetition_penalty": lambda v: v == 1, "min_p": lambda v: v == 0, "tools": lambda v: v == [],
        "tool_choice": lambda v: v in ("none", "auto"), "guided_json": lambda v: False,
        "guided_regex": lambda v: False, "guided_choice": lambda v: False, "guided_grammar": lambda v: False,
        "prompt_logprobs": lambda v: False, "use_beam_search": lambda v: v is False,
        "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
    }
    for field, ok in checks.items():
        v = body.get(field)
        if v is not None and not ok(v):
            raise BadRequest(f"'{field}' = {v!r} is not supported by this server (reclm-jax)", param=field)
    best_of, n = body.get("best_of"), body.get("n")
    if best_of is not None and best_of != (1 if n is None else n):
        raise BadRequest("'best_of' other than n is not supported by this server (reclm-jax)", param="best_of")


def check_model(body: dict, served: str) -> str:
    """The ``model`` field: absent/null means the served model (as vLLM); anything else must name it."""
    model = body.get("model")
    if model is None:
        return served
    if not isinstance(model, str):
        raise _bad("model", "a string", model)
    if model != served:
        raise NotFound(f"The model `{model}` does not exist; this server serves `{served}`", param="model",
                       code="model_not_found")
    return model


# -- prompts --------------------------------------------------------------------------------------------------
def _token_ids(value: list, field: str, vocab: int) -> list[int]:
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise BadRequest(f"'{field}' holds {t!r}, which is not a token id of this model (0 to {vocab - 1})",
                             param="prompt")
    return list(value)


def completion_prompts(body: dict, info: ModelInfo) -> list[list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids or a list of such lists (vLLM's forms)."""
    p = body.get("prompt")
    if p is None:
        raise BadRequest("missing field 'prompt'", param="prompt")
    add = get_bool(body, "add_special_tokens", None)
    if isinstance(p, str):
        p = [p]
    if not isinstance(p, list) or not p:
        raise _bad("prompt", "a string, a list of strings or a non-empty list of token ids", p)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        out = [_token_ids(p, "prompt", info.vocab_size)]
    elif all(isinstance(x, str) for x in p):
        out = [info.encode(x, add) for x in p]
    elif all(isinstance(x, list) for x in p):
        out = [_token_ids(x, f"prompt[{i}]", info.vocab_size) for i, x in enumerate(p)]
    else:
        raise _bad("prompt", "a string, a list of strings, a list of token ids or a list of token-id lists", p)
    for i, ids in enumerate(out):
        if not ids:
            where = "prompt" if len(out) == 1 else f"prompt[{i}]"
            raise BadRequest(f"'{where}' is empty (no tokens): give at least one token", param="prompt")
    return out


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts: only text parts can be served here
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"'messages[{i}].content[{j}]' must be a text part {{\"type\": \"text\", "
                                 f"\"text\": ...}} (this model reads text only)", param="messages")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content", "a string or a list of text parts", content)


def chat_prompt(body: dict, info: ModelInfo) -> list[int]:
    """``messages`` rendered with the model's chat template (a ``UserError`` of the template becomes a 400)."""
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("missing field 'messages'", param="messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "a non-empty list of messages", messages)
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "an object with 'role' and 'content'", m)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise BadRequest(f"'messages[{i}].role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
                             param="messages")
        if "content" not in m or m["content"] is None:
            raise BadRequest(f"'messages[{i}].content' is missing", param="messages")
        clean.append({"role": role, "content": _message_text(m["content"], i)})
    add_gen = get_bool(body, "add_generation_prompt", True)
    cont = get_bool(body, "continue_final_message", False)
    if add_gen and cont:
        raise BadRequest("'continue_final_message' needs 'add_generation_prompt': false",
                         param="continue_final_message")
    if cont and clean[-1]["role"] != "assistant":
        raise BadRequest("'continue_final_message' needs the last message to be the assistant's",
                         param="continue_final_message")
    try:
        text = info.render_chat(clean, add_gen, cont)
    except UserError as e:
        raise BadRequest(str(e), param="messages") from None
    ids = info.encode(text, get_bool(body, "add_special_tokens", None))
    if not ids:
        raise BadRequest("'messages' render to an empty prompt", param="messages")
    return ids


# -- the whole body -------------------------------------------------------------------------------------------
def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", "a non-empty string or a list of non-empty strings", stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise BadRequest(f"'stop' has {len(stops)} strings; at most {MAX_STOP_STRINGS} are accepted", param="stop")
    return tuple(stops)


def _max_tokens(body: dict, kind: str, prompts: Sequence[Sequence[int]], cfg: ServeConfig,
                info: ModelInfo) -> tuple[int, ...]:
    field = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    limit = info.max_model_len
    asked = get_int(body, field, None, lo=1)
    out = []
    for i, ids in enumerate(prompts):
        where = "messages" if kind == "chat" else "prompt"
        if len(ids) >= limit:
            raise BadRequest(f"'{where}' has {len(ids)} tokens; this model's maximum context length is {limit} "
                             f"tokens (prompt and completion together), so at most {limit - 1} fit",
                             param=where)
        m = asked if asked is not None else (cfg.default_max_tokens if kind == "completion" else limit - len(ids))
        m = min(m, limit - len(ids)) if asked is None else m
        if len(ids) + m > limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. However, you requested "
                             f"{len(ids) + m} tokens ({len(ids)} in the {where}, {m} in the completion). Please "
                             f"reduce the length of the {where} or '{field}'.", param=field)
        out.append(m)
    return tuple(out)


def parse_request(body: Any, kind: str, info: ModelInfo, cfg: ServeConfig) -> ParsedRequest:
    """Validates a decoded JSON body of ``kind`` ("completion" or "chat")."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {_type_name(body)}")
    model = check_model(body, cfg.served_model_name)
    _refuse_unsupported(body)
    prompts = completion_prompts(body, info) if kind == "completion" else [chat_prompt(body, info)]
    n = get_int(body, "n", 1, lo=1, hi=cfg.max_n)
    if n * len(prompts) > cfg.max_rows:
        raise BadRequest(f"{len(prompts)} prompts x n = {n} is {n * len(prompts)} sequences; at most "
                         f"{cfg.max_rows} per request", param="n")
    temperature = get_float(body, "temperature", 1.0, 0.0, 100.0)
    top_p = get_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = get_int(body, "top_k", 0, lo=-1, hi=info.vocab_size)
    if kind == "completion":
        logprobs = get_int(body, "logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
        if "top_logprobs" in body and body["top_logprobs"] is not None:
            raise BadRequest("'top_logprobs' is a chat field; completions take 'logprobs': N", param="top_logprobs")
    else:
        want = get_bool(body, "logprobs", False)
        top = get_int(body, "top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
        if top is not None and top > 0 and not want:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        logprobs = (top or 0) if want else None
    stream = get_bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise BadRequest("'stream_options' can only be given with 'stream': true", param="stream_options")
        if not isinstance(options, dict):
            raise _bad("stream_options", "an object", options)
        include_usage = get_bool(options, "include_usage", False)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", "an integer", seed)
    stop_token_ids = body.get("stop_token_ids")
    if stop_token_ids is not None:
        if not isinstance(stop_token_ids, list):
            raise _bad("stop_token_ids", "a list of token ids", stop_token_ids)
        for t in stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < info.vocab_size:
                raise _bad("stop_token_ids", f"a list of token ids (0 to {info.vocab_size - 1})", stop_token_ids)
    ignore_eos = get_bool(body, "ignore_eos", False)
    max_tokens = _max_tokens(body, kind, prompts, cfg, info)
    min_tokens = get_int(body, "min_tokens", 0, lo=0)
    if min_tokens > min(max_tokens):
        raise BadRequest(f"'min_tokens' ({min_tokens}) is more than max_tokens ({min(max_tokens)})",
                         param="min_tokens")
    if min_tokens and not ignore_eos:
        raise BadRequest("'min_tokens' > 0 is supported only with 'ignore_eos': true (then every completion "
                         "runs to max_tokens unless a stop string cuts it)", param="min_tokens")
    params = Params(n=n, temperature=temperature, top_p=top_p, top_k=max(top_k, 0), max_tokens=max_tokens,
                    stop=_stop(body), stop_token_ids=tuple(stop_token_ids or ()),
                    include_stop_str_in_output=get_bool(body, "include_stop_str_in_output", False),
                    ignore_eos=ignore_eos, seed=seed, logprobs=logprobs,
                    skip_special_tokens=get_bool(body, "skip_special_tokens", True), stream=stream,
                    include_usage=include_usage, return_token_ids=get_bool(body, "return_token_ids", False))
    constraint = parse_constraint(body, getattr(info, "catalogue", None))
    return ParsedRequest(kind, model, tuple(tuple(p) for p in prompts), params, constraint)
