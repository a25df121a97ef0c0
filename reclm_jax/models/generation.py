"""Generation building blocks (sampling settings, token choice, the logits-processor hook, padding) and
``generate``, the one-call wrapper over a ``Sampler`` (``models/sampler.py``).

Returned logprobs are those of the *model* (log-softmax of the raw logits) for the chosen tokens, before
temperature, top-k/top-p and the logits processor: the numbers RL needs for the policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reclm_jax.buckets import bucket  # noqa: F401  (re-exported: callers import it from here)
from reclm_jax.errors import UserError
from reclm_jax.models.kv_cache import constrain_cache, init_cache

MAX_STOP_IDS = 8


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
    of the compile key, so reuse one instance; changing arrays (tables, allowed ids) go in ``data``, the
    pytree passed as ``processor_data``, and do not recompile when only their values change.
    ``state`` is any pytree the processor carries from step to step (e.g. a trie node per row).

    Per-row data: ``processor_data`` is then a dict, and ``row_fields`` names its entries that hold one row
    per prompt (every array leaf ``[n, ...]``, n = number of prompts, in prompt order). The sampler pads
    those along with the batch (idle rows get zeros, so a processor must tolerate all-zero rows) and shards
    them like the batch, so inside the methods they are ``[B, ...]`` with B the batch bucket, row i
    belonging to prompt i. Every other entry is shared by all rows and passed unchanged. One batch can so
    carry requests with different constraints.
    """

    row_fields: tuple[str, ...] = ()

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
    stopped: np.ndarray  # bool [B]: the row ended on a stop id (False: it hit its max_new_tokens)
    # With ``top_logprobs=k``: the k most likely tokens of each step, int32 [B, max_new_tokens, k] (most likely
    # first), and their model log-probabilities, float32; pad_id and 0 after the end. None otherwise.
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None

    def token_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def trace_count() -> int:
    """How many times any generation program has been traced (= compiled) in this process."""
    from reclm_jax.models import sampler

    return sampler.total_traces()


def argmax_last(x: jnp.ndarray) -> jnp.ndarray:
    """``jnp.argmax(x, axis=-1)`` as int32, the same index (the first maximum; the first NaN if any).

    Written as a max, a compare and a min over an iota: XLA:CPU lowers argmax to a variadic (value, index)
    reduce it does not vectorise, which took 3.5 ms for [16, 49152] f32 against 0.46 ms for this form
    (measured on the 2-core dev machine), the largest non-matmul cost of a decoding step.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    hit = (x == top) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, iota, x.shape[-1]), axis=-1)


def chosen_logprobs(logits: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
    """float32 logits [B, V], int32 tokens [B] -> ``log_softmax(logits)[b, tokens[b]]`` [B].

    The same arithmetic as ``jax.nn.log_softmax`` (``(x - max) - log(sum(exp(x - max)))``), but only the
    chosen entries are formed: the full [B, V] log-softmax cost 0.8 ms per decoding step on XLA:CPU.
    """
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    picked = jnp.take_along_axis(shifted, tokens[:, None], axis=-1)[:, 0]
    return picked - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))


def _categorical(key: jax.Array, logits: jnp.ndarray) -> jnp.ndarray:
    # jax.random.categorical's own draw (Gumbel noise of the logits' shape and dtype, then the argmax), with
    # the vectorisable argmax: bit-identical samples.
    return argmax_last(jax.random.gumbel(key, logits.shape, logits.dtype) + logits)


def _nucleus_of_sorted(vals: jnp.ndarray, top_p: float) -> jnp.ndarray:
    # vals [B, k] sorted descending: keep each candidate whose mass strictly above it is below top_p
    # (always the first), the rest -inf.
    probs = jax.nn.softmax(vals, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(before < top_p, vals, -jnp.inf)


def _order_key(x: jnp.ndarray) -> jnp.ndarray:
    # float32 -> int32 with the same order (negative floats' magnitude bits flipped).
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(i < 0, i ^ 0x7FFFFFFF, i)


def _from_order_key(k: jnp.ndarray) -> jnp.ndarray:
    return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ 0x7FFFFFFF, k), jnp.float32)


def _nucleus_of_vocab(logits: jnp.ndarray, top_p: float) -> jnp.ndarray:
    """The top-p filter over the whole vocabulary without sorting it (a [16, 49152] sort took ~150 ms per
    decoding step on XLA:CPU): keeps token i iff the probability mass of the tokens with larger logits is
    below top_p, found as the smallest kept logit by a 32-step bisection over the floats' order."""
    probs = jax.nn.softmax(logits, axis=-1)
    lo = jnp.min(_order_key(logits), axis=-1)
    hi = jnp.max(_order_key(logits), axis=-1)  # S(max) = 0 < top_p: the answer is in [lo, hi]

    def above(v):  # mass of the tokens whose logit exceeds v, per row
        return jnp.sum(jnp.where(logits > v[:, None], probs, 0.0), axis=-1)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without int32 overflow
        ok = above(_from_order_key(mid)) < top_p
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, step, (lo, hi))
    return jnp.where(logits >= _from_order_key(lo)[:, None], logits, -jnp.inf)


def sample_tokens(logits: jnp.ndarray, key: jax.Array, cfg: SamplingConfig) -> jnp.ndarray:
    """Chooses one token per row from float32 logits [B, V] -> int32 [B].

    ``key``: one JAX key for the whole batch, or a key array [B] (one per row: row r's draw then depends on
    its own key and logits only, not on its neighbours). With top-k the draw is among the k candidates only
    (Gumbel noise for k values, not the vocabulary: the full-vocabulary draw and threshold cost ~100 ms per
    step at [16, 49152] on XLA:CPU); the distribution is the same, exactly k candidates are kept (ties at the
    k-th value are not all kept, as transformers' filter would).
    """
    if cfg.temperature == 0.0:
        return argmax_last(logits)
    logits = logits / cfg.temperature
    draw = jax.vmap(_categorical) if key.ndim == 1 else _categorical
    if cfg.top_k > 0:
        vals, idx = jax.lax.top_k(logits, min(cfg.top_k, logits.shape[-1]))
        if cfg.top_p < 1.0:
            vals = _nucleus_of_sorted(vals, cfg.top_p)
        pick = draw(key, vals)
        return jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if cfg.top_p < 1.0:
        logits = _nucleus_of_vocab(logits, cfg.top_p)
    return draw(key, logits)


def prefill(model, tokens, mask, size: int, cache_dtype, adapter):
    """Runs left-padded prompts int32 [B, P] (mask bool [B, P]) into a fresh cache of ``size`` >= P slots ->
    (the cache, slots [0, P) filled and ``end`` = P; the next token's logits [B, V] in the compute dtype).
    The prompt attends within itself; the LM head runs on the last position only."""
    cache = init_cache(model.config, tokens.shape[0], size, jnp.dtype(cache_dtype) if cache_dtype else None)
    cache = constrain_cache(cache)  # batch over the data axes, KV heads over tp
    out = model(tokens, attention_mask=mask, cache=cache, adapter=adapter, prefill=True, compute_logits=False)
    return out.cache, model.head(out.hidden[:, -1:], adapter=adapter)[:, 0]


def seed_keys(seeds: jnp.ndarray) -> jax.Array:
    """uint32 [B, 2] (seed, stream) per row -> one JAX key per row, ``fold_in(key(seed), stream)``."""
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds[:, 0], seeds[:, 1])


def step_keys(row_keys: jax.Array, step) -> jax.Array:
    """Row keys [B] and the token index ``step`` (int32 scalar, or [B]: each row's own) -> the draw's keys [B]."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None if jnp.ndim(step) == 0 else 0))(row_keys, step)


def advance(new, lp, done, lengths, limits, stops, pad_id: int):
    """One generated token per row, booked: new int32 [B] (the chosen tokens), lp f32 [B] (their log-probs),
    done bool [B] (rows already finished), lengths int32 [B] (tokens so far), limits int32 [B], stops int32
    [B, 8] (-1 unused) -> (tokens: the pad id where done, log-probs: 0 where done, lengths, done, hit: the rows
    this token stopped). The Sampler's and the SlotDecoder's loops, and their first tokens (done = idle rows,
    lengths 0), book alike through this."""
    new = jnp.where(done, pad_id, new)
    lp = jnp.where(done, 0.0, lp)
    lengths = lengths + (~done).astype(jnp.int32)
    hit = ~done & jnp.any(new[:, None] == stops, axis=-1)
    return new, lp, lengths, done | hit | (lengths >= limits), hit


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


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int], pad_id: int,
             stop_ids: Sequence[int] = (), sampling: SamplingConfig = SamplingConfig(),
             seed: int | Sequence[int] | jax.Array = 0, adapter: str | None = None, cache_dtype: str | None = None,
             logits_processor: LogitsProcessor | None = None, processor_data: Any = None,
             prompt_buckets: Sequence[int] | None = None, batch_buckets: Sequence[int] | None = None,
             min_prompt_bucket: int = 16, runtime=None) -> GenerationResult:
    """Continues each prompt (a list of token ids) by up to ``max_new_tokens`` tokens (an int, or one per prompt).

    A thin wrapper over ``Sampler`` (see there for every argument): one call's Sampler is kept per
    (graphdef, settings) in a small process-wide cache, so calling ``generate`` again and again with the same
    model reuses its compiled programs; the weights are taken from ``model`` at every call. ``model`` is a
    ``LlamaForCausalLM``, ``(graphdef, state)`` or ``(graphdef, trainable, frozen)``. ``seed``: an int (each
    row draws the stream of its global row index from it), one int per prompt (a list or numpy array), or one
    JAX key, typed (``jax.random.key``) or raw uint32[2] (``jax.random.PRNGKey``), whose bits become the int
    seed; anything else is a ``UserError``. ``runtime``: an optional ``reclm_jax.train.runtime.Runtime``.
    """
    from reclm_jax.models.sampler import shared_sampler

    if not prompts:
        raise UserError("generate: no prompts given")
    if any(len(p) == 0 for p in prompts):  # before touching the model, so the message names the real mistake
        raise UserError("generate: every prompt needs at least one token")
    with shared_sampler(model, pad_id=pad_id, cache_dtype=cache_dtype, prompt_buckets=prompt_buckets,
                        batch_buckets=batch_buckets, min_prompt_bucket=min_prompt_bucket, runtime=runtime) as s:
        return s(prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids, sampling=sampling, seeds=seed,
                 adapter=adapter, logits_processor=logits_processor, processor_data=processor_data)
