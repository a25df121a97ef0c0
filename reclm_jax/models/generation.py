"""Batched autoregressive generation with a KV cache, compiled once per (batch bucket, prompt bucket, settings).

Prompts are left-padded to a prompt-length bucket and the batch is padded with idle rows to a batch
bucket, so RL rollouts that call ``generate`` again and again with new prompts reuse the compiled program.
Prefill and the whole decode loop (``lax.while_loop``, which stops early once every row has stopped) run in
one jitted function of (graphdef, params, arrays).

Returned logprobs are those of the *model* (log-softmax of the raw logits) for the chosen tokens, before
temperature, top-k/top-p and the logits processor: the numbers RL needs for the policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from reclm_jax.errors import UserError
from reclm_jax.models.kv_cache import init_cache
from reclm_jax.models.sharding import batch_sharding

MAX_STOP_IDS = 8
_TRACES = {"generate": 0}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` is greedy decoding; ``top_k == 0`` and ``top_p == 1`` switch those filters off.

    Applied in transformers' order: temperature, top-k, top-p. Part of the compile key.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise UserError(f"bad sampling settings {self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1")


class LogitsProcessor:
    """Hook that edits next-token logits inside the compiled loop (e.g. constrained decoding).

    Subclasses override the three methods with pure JAX code. The object itself is a static (hashed) part
    of the compile key, so reuse one instance; changing arrays (tables, allowed ids) go in ``data``, a pytree
    passed to ``generate(processor_data=...)``, and do not recompile when only their values change.
    ``state`` is any pytree the processor carries from step to step (e.g. a trie node per row).
    """

    def init(self, prompt_tokens: jnp.ndarray, prompt_mask: jnp.ndarray, data: Any) -> Any:
        """prompt_tokens int32 [B, P] (left-padded), prompt_mask bool [B, P] -> initial state."""
        return ()

    def process(self, state: Any, logits: jnp.ndarray, step: jnp.ndarray, data: Any) -> jnp.ndarray:
        """logits float32 [B, V] of new token number ``step`` (int32 scalar, 0-based) -> edited logits."""
        return logits

    def update(self, state: Any, tokens: jnp.ndarray, data: Any) -> Any:
        """tokens int32 [B] just chosen -> next state."""
        return state


@dataclasses.dataclass
class GenerationResult:
    tokens: np.ndarray  # int32 [B, max_new_tokens]; pad_id after each row's end
    logprobs: np.ndarray  # float32 [B, max_new_tokens]; model log-probabilities of `tokens`, 0 after the end
    lengths: np.ndarray  # int32 [B]: generated tokens per row, including the stop token if any
    stopped: np.ndarray  # bool [B]: the row ended on a stop id (False: it hit max_new_tokens)

    def token_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def trace_count() -> int:
    """How many times the generation program has been traced (= compiled) in this process."""
    return _TRACES["generate"]


def bucket(n: int, buckets: Sequence[int] | None, minimum: int = 1) -> int:
    """The smallest bucket >= n: from ``buckets`` if given, else the next power of two >= max(n, minimum)."""
    if buckets:
        for b in sorted(buckets):
            if b >= n:
                return b
        raise UserError(f"length {n} exceeds the largest bucket {max(buckets)}")
    b = max(minimum, 1)
    while b < n:
        b *= 2
    return b


def sample_tokens(logits: jnp.ndarray, key: jax.Array, cfg: SamplingConfig) -> jnp.ndarray:
    """Chooses one token per row from float32 logits [B, V] -> int32 [B]."""
    if cfg.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
        keep = before < cfg.top_p  # always keeps the most likely token
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _generate(graphdef, state, tokens, mask, active, stop_ids, key, data, *, max_new_tokens, sampling, adapter,
              cache_dtype, processor, pad_id):
    _TRACES["generate"] += 1  # runs only while tracing
    model = nnx.merge(graphdef, state)
    cfg = model.config
    b, p = tokens.shape
    cache = init_cache(cfg, b, p + max_new_tokens, jnp.dtype(cache_dtype) if cache_dtype else None)
    # Prefill: the prompt attends among itself; the LM head runs on the last position only.
    out = model(tokens, attention_mask=mask, cache=cache, adapter=adapter, prefill=True, compute_logits=False)
    first_logits = model.head(out.hidden[:, -1:], adapter=adapter)[:, 0]
    proc_state = processor.init(tokens, mask, data) if processor is not None else ()

    def choose(logits, key, step, proc_state):
        logits = logits.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        if processor is not None:
            logits = processor.process(proc_state, logits, step, data)
        tok = sample_tokens(logits, key, sampling)
        return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]

    key, sub = jax.random.split(key)
    tok, lp = choose(first_logits, sub, jnp.int32(0), proc_state)
    tok = jnp.where(active, tok, pad_id)
    if processor is not None:
        proc_state = processor.update(proc_state, tok, data)
    out_tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    out_logp = jnp.zeros((b, max_new_tokens), jnp.float32).at[:, 0].set(jnp.where(active, lp, 0.0))
    lengths = active.astype(jnp.int32)
    stopped = active & jnp.isin(tok, stop_ids)
    done = ~active | stopped

    def cond(carry):
        step, _, _, done, *_ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, tok, done, stopped, lengths, out_tokens, out_logp, key, proc_state = carry
        out = model(tok[:, None], cache=cache, adapter=adapter)
        key, sub = jax.random.split(key)
        new, lp = choose(out.logits[:, 0], sub, step, proc_state)
        new = jnp.where(done, pad_id, new)
        if processor is not None:
            proc_state = processor.update(proc_state, new, data)
        out_tokens = jax.lax.dynamic_update_slice(out_tokens, new[:, None], (0, step))
        out_logp = jax.lax.dynamic_update_slice(out_logp, jnp.where(done, 0.0, lp)[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        hit = ~done & jnp.isin(new, stop_ids)
        return (step + 1, out.cache, new, done | hit, stopped | hit, lengths, out_tokens, out_logp, key,
                proc_state)

    carry = (jnp.int32(1), out.cache, tok, done, stopped, lengths, out_tokens, out_logp, key, proc_state)
    carry = jax.lax.while_loop(cond, body, carry)
    _, _, _, _, stopped, lengths, out_tokens, out_logp, _, _ = carry
    return out_tokens, out_logp, lengths, stopped


_generate_jit = jax.jit(_generate, static_argnames=("graphdef", "max_new_tokens", "sampling", "adapter",
                                                    "cache_dtype", "processor", "pad_id"))


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into int32 [rows, length] and a bool mask; extra rows hold one pad token."""
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p):] = p
            mask[i, length - len(p):] = True
    mask[len(prompts):, -1] = True  # idle rows: one token so no row is empty
    return tokens, mask


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
             stop_ids: Sequence[int] = (), sampling: SamplingConfig = SamplingConfig(), seed: int | jax.Array = 0,
             adapter: str | None = None, cache_dtype: str | None = None,
             logits_processor: LogitsProcessor | None = None, processor_data: Any = None,
             prompt_buckets: Sequence[int] | None = None, batch_buckets: Sequence[int] | None = None,
             min_prompt_bucket: int = 16) -> GenerationResult:
    """Continues each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    ``model`` is a ``LlamaForCausalLM`` or its ``(graphdef, state)`` from ``nnx.split``. A row stops after
    emitting any of ``stop_ids`` (at most 8; e.g. EOS and ``<|im_end|>``). ``adapter`` selects a LoRA
    adapter (None = base weights). ``cache_dtype`` ("bfloat16") overrides the KV cache dtype. ``seed`` is
    an int or a JAX key. Buckets default to powers of two (prompt length at least ``min_prompt_bucket``).
    """
    if not prompts:
        raise UserError("generate: no prompts given")
    if max_new_tokens < 1:
        raise UserError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise UserError("generate: every prompt needs at least one token")
    stop = [int(s) for s in stop_ids]
    if len(stop) > MAX_STOP_IDS:
        raise UserError(f"generate: at most {MAX_STOP_IDS} stop ids, got {len(stop)}")
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    rows = bucket(len(prompts), batch_buckets)
    length = bucket(max(len(p) for p in prompts), prompt_buckets, min_prompt_bucket)
    tokens, mask = left_pad(prompts, length, rows, pad_id)
    active = np.arange(rows) < len(prompts)
    stop_arr = np.full((MAX_STOP_IDS,), -1, np.int32)
    stop_arr[: len(stop)] = stop
    key = jax.random.key(seed) if isinstance(seed, int) else seed

    mesh = _mesh_of_state(state)
    arrays = (tokens, mask, active)
    if mesh is not None and mesh.size > 1:
        arrays = tuple(jax.device_put(a, batch_sharding(mesh, a.ndim, rows)) for a in arrays)
    out = _generate_jit(graphdef, state, *arrays, stop_arr, key, processor_data, max_new_tokens=max_new_tokens,
                        sampling=sampling, adapter=adapter, cache_dtype=cache_dtype, processor=logits_processor,
                        pad_id=int(pad_id))
    toks, logp, lens, stopped = (np.asarray(x) for x in jax.device_get(out))
    n = len(prompts)
    return GenerationResult(tokens=toks[:n], logprobs=logp[:n], lengths=lens[:n], stopped=stopped[:n])


def _mesh_of_state(state):
    for leaf in jax.tree_util.tree_leaves(state):
        s = getattr(leaf, "sharding", None)
        if isinstance(s, NamedSharding):
            return s.mesh
    return None
