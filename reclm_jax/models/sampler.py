"""``Sampler``: one model's compiled generation program, reused across calls, lengths and weight updates.

Why an object: RL rollouts take new actor weights every iteration and a server answers requests of every
length; both must keep one compiled program. The Sampler holds the model split as (graphdef, trainable,
frozen) and a jit cache per static setting (sampling, adapter, processor, output bucket); everything that
varies per call is a traced array:

- ``max_new_tokens`` is a per-row int32 limit inside a bucketed output length (powers of two >= 16 by
  default), so lengths within a bucket reuse one program;
- each row draws from its own key, ``fold_in(fold_in(key(seed), stream), step)``, so a row's sample depends
  on its seed, stream and logits only, never on its batch neighbours. With one int seed per prompt the stream
  is 0: the row's sample is reproducible wherever it sits in any batch. With one int seed for the call the
  stream is the row's *global* row index (its position in the batch summed over all processes), so rows, and
  the same row on two processes, draw different numbers, and a row's sample depends on its index;
- ``update_params`` swaps in new trainable weights (same tree, shapes and shardings) without recompiling;
- stop ids are per row ([B, 8], -1 = unused), so one batch can mix requests with different stop tokens.

Prefill (the prompt attends within itself; the LM head runs on its last position only) and the whole decode
loop (``lax.while_loop``, stopping once every row is done) are one jitted function. The KV cache is created
inside it and never leaves it, so there is nothing worth donating: no input buffer matches an output.

Batch rows are padded to batch buckets and prompts left-padded to prompt buckets. With a ``Runtime`` the
program runs inside ``runtime.activate()`` (so the model's activation constraints apply) and batch arrays are
assembled with ``runtime.place`` from this process's rows. With more than one process every process must call
the Sampler together (it is a collective): they first agree on the largest row count, prompt length and
``max_new_tokens`` (``runtime.agree_max``) so all compile the same global shapes, and each gets back its own
rows, read from the shards on its own devices (no gather across hosts).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.cancellation import cancelled_rows, registered
from reclm_jax.models.generation import (MAX_STOP_IDS, GenerationResult, LogitsProcessor, SamplingConfig, bucket,
                                         advance, chosen_logprobs, left_pad, prefill, sample_tokens, seed_keys,
                                         step_keys)
from reclm_jax.models.kernels import packed_weights
from reclm_jax.models.linear import LoRAParam
from reclm_jax.models.lora import mesh_of
from reclm_jax.models.packed_kernels import PackedKernels
from reclm_jax.models.sharding import constrain

_TRACES = [0]  # every Sampler's traces together (generation.trace_count)


def total_traces() -> int:
    return _TRACES[0]


def note_trace() -> None:
    """Counts one generation program's trace in ``total_traces`` (the SlotDecoder's programs call it too)."""
    _TRACES[0] += 1


def split_model(model) -> tuple[Any, nnx.State, nnx.State]:
    """A ``LlamaForCausalLM``, ``(graphdef, state)`` or ``(graphdef, trainable, frozen)`` -> the 3-way split.

    Without an explicit split the trainable part is every LoRA parameter (what RL and SFT update)."""
    if isinstance(model, tuple) and len(model) == 3:
        return model
    if isinstance(model, tuple) and len(model) == 2:
        graphdef, state = model
        trainable, frozen = nnx.split_state(state, LoRAParam, ...)
        return graphdef, trainable, frozen
    if isinstance(model, nnx.Module):
        return nnx.split(model, LoRAParam, ...)
    raise UserError(f"Sampler: expected a model, (graphdef, state) or (graphdef, trainable, frozen), got "
                    f"{type(model).__name__}")


def runtime_for(tree):
    """A ``Runtime`` over the mesh ``tree``'s weights live on (this process's place in it), or None when they
    are on no mesh. ``models/`` imports ``train/`` only here, lazily (see docs/architecture.md)."""
    mesh = mesh_of(tree)
    if mesh is None:
        return None
    from reclm_jax.train.runtime import Runtime

    return Runtime(mesh, jax.process_index(), jax.process_count())


@functools.cache
def _raw_key_shape() -> tuple[int, ...]:
    """The default PRNG implementation's raw key shape ((2,) for threefry), found abstractly: nothing runs."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def key_seed(seed) -> int | None:
    """The int seed of a JAX key (typed, ``jax.random.key``, or raw uint32[2], ``jax.random.PRNGKey``), else None.

    Only a ``jax.Array`` of the raw key shape and dtype counts as a raw key; per-prompt seeds are ints (a list or
    a numpy array). A typed key array of another shape than () is refused: one key is one seed."""
    if not isinstance(seed, jax.Array):
        return None
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        if seed.shape != ():
            raise UserError(f"seed: one JAX key (shape ()), got a key array of shape {seed.shape}; give one "
                            f"int seed per prompt instead")
        return int(jax.random.bits(seed, dtype=jnp.uint32))
    if seed.dtype == jnp.uint32 and seed.shape == _raw_key_shape():
        return int(jax.random.bits(jax.random.wrap_key_data(seed), dtype=jnp.uint32))
    return None


def row_seeds(seeds, n: int, rows: np.ndarray | None = None) -> np.ndarray:
    """uint32 [n, 2] (seed, stream) per row.

    An int (or a JAX key, ``key_seed``) -> (seed, rows[i]) for row i, ``rows`` being the rows' global row
    indices (default 0..n-1, one process); n ints -> (seed_i, 0), independent of the row's position."""
    key = key_seed(seeds)
    if key is not None:
        seeds = key
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        streams = np.arange(n) if rows is None else np.asarray(rows[:n], np.int64)
        out = np.stack([np.full(n, int(seeds)), streams], axis=1)
    else:
        s = np.asarray(seeds).reshape(-1)
        if len(s) != n or not np.issubdtype(s.dtype, np.integer):
            raise UserError(f"Sampler: seeds must be an int, a JAX key or one int per prompt ({n}), got {seeds!r}")
        out = np.stack([s.astype(np.int64), np.zeros(n, np.int64)], axis=1)
    if (out < 0).any() or (out >= 2 ** 32).any():
        raise UserError("Sampler: seeds must lie in [0, 2**32)")
    return out.astype(np.uint32)


def process_rows(runtime, rows: int) -> np.ndarray:
    """The global row indices of this process's ``rows`` batch rows, in order, as ``runtime.place`` lays them out.

    ``jax.make_array_from_process_local_data`` maps a process's local rows, in order, onto the sorted row blocks
    its devices hold in the batch sharding; so this is the sorted union of those blocks (0..rows-1 with one
    process)."""
    if runtime is None or runtime.process_count == 1:
        return np.arange(rows)
    total = rows * runtime.process_count
    held = runtime.batch_sharding(1, total).addressable_devices_indices_map((total,))
    ids = sorted({r for index in held.values() for r in range(*index[0].indices(total))})
    if len(ids) != rows:  # a non-uniform batch sharding: runtime.place would have refused it too
        raise UserError(f"Sampler: this process's devices hold {len(ids)} of the {total} batch rows, "
                        f"not its {rows}")
    return np.asarray(ids)


def read_rows(x: jax.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (global indices) of ``x`` as numpy, read from the shards on this process's devices only.

    The program constrains its outputs to the batch sharding its inputs were placed with, so the rows a process
    supplied are on its own devices; nothing is gathered across hosts. Raises if some row is not (which the
    constraint rules out) rather than gathering: a gather is a collective, and only this process would enter it.
    """
    out = np.zeros((len(rows), *x.shape[1:]), x.dtype)
    seen = np.zeros(out.shape, bool)
    where = {int(r): i for i, r in enumerate(rows)}
    for shard in x.addressable_shards:
        index = shard.index
        pairs = [(j, where[r]) for j, r in enumerate(range(*index[0].indices(x.shape[0]))) if r in where]
        if not pairs:
            continue
        src, dst = (np.asarray(v) for v in zip(*pairs))
        rest = index[1:]
        if seen[(dst, *rest)].all():
            continue  # a replica of rows already read
        out[(dst, *rest)] = np.asarray(shard.data)[src]
        seen[(dst, *rest)] = True
    if not seen.all():
        raise RuntimeError("Sampler: this process's rows are not all on its own devices (the program's output "
                           "sharding differs from the batch sharding)")
    return out


def _stop_rows(stop_ids, n: int) -> list[list[int]]:
    """A flat list (every row) or one list per prompt -> one list per prompt, each at most MAX_STOP_IDS."""
    stop_ids = list(stop_ids)
    per_row = bool(stop_ids) and not isinstance(stop_ids[0], (int, np.integer))
    rows = [list(map(int, s)) for s in stop_ids] if per_row else [list(map(int, stop_ids))] * n
    if len(rows) != n:
        raise UserError(f"Sampler: per-row stop_ids need one list per prompt ({n}), got {len(rows)}")
    if any(len(r) > MAX_STOP_IDS for r in rows):
        raise UserError(f"Sampler: at most {MAX_STOP_IDS} stop ids per row")
    return rows


class Sampler:
    """Batched generation for one model; see the module docstring.

    model: ``LlamaForCausalLM``, ``(graphdef, state)`` or ``(graphdef, trainable, frozen)`` (``split_model``).
    pad_id: written after each row's end and into padding. stop_ids: the default stop ids of every call.
    runtime: a ``reclm_jax.train.runtime.Runtime``; default: none on one device, or a Runtime over the mesh
    the weights live on. cache_dtype: KV cache dtype ("bfloat16"), default the compute dtype.
    prompt_buckets / batch_buckets / length_buckets: allowed prompt lengths, batch rows and output lengths;
    default powers of two, at least ``min_prompt_bucket`` / 1 / ``min_length_bucket``.
    """

    def __init__(self, model, *, pad_id: int, stop_ids: Sequence[int] = (), runtime=None,
                 cache_dtype: str | None = None, prompt_buckets: Sequence[int] | None = None,
                 batch_buckets: Sequence[int] | None = None, length_buckets: Sequence[int] | None = None,
                 min_prompt_bucket: int = 16, min_length_bucket: int = 16):
        self.graphdef, self.trainable, self.frozen = split_model(model)
        self.pad_id = int(pad_id)
        self.stop_ids = tuple(int(s) for s in stop_ids)
        _stop_rows(self.stop_ids, 1)  # validates the count
        self.runtime = runtime if runtime is not None else runtime_for((self.trainable, self.frozen))
        self.cache_dtype = cache_dtype
        self.prompt_buckets = tuple(prompt_buckets) if prompt_buckets else None
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else None
        self.length_buckets = tuple(length_buckets) if length_buckets else None
        self.min_prompt_bucket, self.min_length_bucket = min_prompt_bucket, min_length_bucket
        self.traces = 0  # how often this Sampler's programs were traced (= compiled)
        self._programs: dict[tuple, Any] = {}
        self.packer = PackedKernels(self.graphdef)  # packed_kernels()' cache; a SlotDecoder may share it

    # -- weights ------------------------------------------------------------------------------------------
    def update_params(self, trainable: nnx.State) -> None:
        """Swaps in new trainable weights (e.g. LoRA after a training step); the programs are reused.

        ``trainable`` must have the current tree structure, shapes and dtypes; leaves on another sharding
        are moved onto the current one (a different sharding would otherwise be a new compile).

        The Sampler keeps references to the arrays it was given (here or at construction), not copies. A
        train step that donates them (the SFT step donates ``trainable``) deletes those buffers, and a later
        call would fail on deleted arrays: call ``update_params`` with the step's fresh arrays before every use
        after such a step (the SFT trainer does, before each validation)."""
        old_leaves, old_tree = jax.tree.flatten(self.trainable)
        new_leaves, new_tree = jax.tree.flatten(trainable)
        if old_tree != new_tree:
            raise UserError("Sampler.update_params: the new parameters have another tree structure")
        placed = []
        for o, n in zip(old_leaves, new_leaves):
            if o.shape != n.shape or o.dtype != n.dtype:
                raise UserError(f"Sampler.update_params: a parameter changed from {o.shape} {o.dtype} to "
                                f"{n.shape} {n.dtype}")
            s = getattr(o, "sharding", None)
            placed.append(n if s is None or getattr(n, "sharding", None) == s else jax.device_put(n, s))
        self.trainable = jax.tree.unflatten(new_tree, placed)

    def packed_kernels(self) -> dict:
        """This Sampler's weights' ``PackedKernels`` (computed once per set of weights, then kept)."""
        return self.packer(self.trainable, self.frozen, self.runtime)

    # -- generation ---------------------------------------------------------------------------------------
    def __call__(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
                 seeds: int | Sequence[int] | jax.Array = 0, sampling: SamplingConfig = SamplingConfig(),
                 adapter: str | None = None, stop_ids=None, logits_processor: LogitsProcessor | None = None,
                 processor_data: Any = None, rows: int | None = None, top_logprobs: int = 0,
                 cancelled: Callable[[], Sequence[bool]] | None = None) -> GenerationResult:
        """Continues each prompt (a non-empty list of token ids) by up to ``max_new_tokens`` tokens.

        max_new_tokens: an int or one per prompt (each >= 1). seeds: an int or a JAX key (typed or raw
        uint32[2]; its bits become the int), from which each row draws the stream of its global row index
        (its position in the batch over all processes), or one int per prompt (the row's sample is then
        reproducible wherever it sits in any batch); only used when ``sampling.temperature > 0``. adapter: the
        LoRA adapter (None = base weights). stop_ids: ints for every row or one list per prompt (at most 8
        each); None = the Sampler's. rows: pad this process's batch to exactly this many rows instead of its
        bucket (with several processes: the largest ``rows`` any of them asks for). top_logprobs: also return
        the k most likely tokens of every step and their model log-probs (a static setting: another program).
        Returns this process's rows: tokens int32 and logprobs float32 [n, max(max_new_tokens)], lengths int32
        [n], stopped bool [n]; with top_logprobs = k > 0 also top_ids int32 and top_logprobs float32
        [n, max(max_new_tokens), k] (most likely first).

        cancelled: a host function polled while the call decodes (every ``cancellation.POLL_STEPS`` steps), one
        bool per prompt: a row it flags stops there, unstopped, with the tokens it has (a server's departed client);
        the call ends once every row has. One process only; such calls share a program of their own.

        With more than one process this is a collective: every process calls it, with its own prompts.
        """
        n = len(prompts)
        if n == 0:
            raise UserError("generate: no prompts given")
        if any(len(p) == 0 for p in prompts):
            raise UserError("generate: every prompt needs at least one token")
        limits = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (n,)) if np.ndim(max_new_tokens) == 0 \
            else np.asarray(max_new_tokens, np.int64)
        if limits.shape != (n,) or (limits < 1).any():
            raise UserError(f"generate: max_new_tokens must be >= 1 (an int or one per prompt), got {max_new_tokens}")
        stops = _stop_rows(self.stop_ids if stop_ids is None else stop_ids, n)
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, (int, np.integer)) or top_logprobs < 0:
            raise UserError(f"generate: top_logprobs must be an int >= 0, got {top_logprobs!r}")
        if rows is not None and rows < n:
            raise UserError(f"generate: {n} prompts do not fit in rows={rows}")
        rt = self.runtime
        if cancelled is not None and rt is not None and rt.process_count > 1:
            raise UserError("generate: cancelled= needs a single process (each process would poll its own host)")
        n_rows, longest, top = rows or n, max(len(q) for q in prompts), int(limits.max())
        if rt is not None and rt.process_count > 1:  # every process must compile the same global shapes
            agree = getattr(rt, "agree_max", None)
            if agree is None:
                raise UserError("Sampler: with more than one process the runtime must provide agree_max (the "
                                "processes agree on the batch, prompt and output buckets)")
            n_rows, longest, top = agree([n_rows, longest, top])
        b = n_rows if rows else bucket(n_rows, self.batch_buckets)
        p = bucket(longest, self.prompt_buckets, self.min_prompt_bucket)
        length = bucket(top, self.length_buckets, self.min_length_bucket)
        mine = process_rows(rt, b)  # the global row index of each of this process's rows

        tokens, mask = left_pad(prompts, p, b, self.pad_id)
        lim = np.zeros(b, np.int32)  # idle rows: limit 0, done before the first step
        lim[:n] = limits
        stop_arr = np.full((b, MAX_STOP_IDS), -1, np.int32)
        for i, s in enumerate(stops):
            stop_arr[i, : len(s)] = s
        seed_arr = np.zeros((b, 2), np.uint32)
        seed_arr[:n] = row_seeds(seeds, n, mine)
        shared, per_row = _split_processor_data(logits_processor, processor_data, n, b)

        batch = (tokens, mask, lim, stop_arr, seed_arr, per_row)
        program = self._program(sampling, adapter, logits_processor, length, int(top_logprobs),
                                cancelled is not None)
        if rt is not None:
            batch, shared = rt.place_tree(batch), rt.replicate(shared)
        with rt.activate() if rt is not None else contextlib.nullcontext(), \
                registered(cancelled, n) if cancelled is not None else contextlib.nullcontext(0) as call_id:
            out = program(self.trainable, self.frozen, self.packed_kernels(), *batch, shared, np.int32(call_id))
            # Read inside: dispatch is asynchronous, and the check must stay registered until the decode ends.
            toks, logp, lens, stopped, *top = (read_rows(x, mine[:n]) for x in out)
        width = int(limits.max())
        top_ids, top_lp = (top[0][:, :width], top[1][:, :width]) if top else (None, None)
        return GenerationResult(tokens=toks[:, :width], logprobs=logp[:, :width], lengths=lens, stopped=stopped,
                                top_ids=top_ids, top_logprobs=top_lp)

    def _program(self, sampling: SamplingConfig, adapter: str | None, processor: LogitsProcessor | None,
                 length: int, top_logprobs: int = 0, cancellable: bool = False):
        key = (sampling, adapter, processor, top_logprobs, cancellable, length)  # the length last (tests read it)
        if key not in self._programs:
            graphdef, pad_id, cache_dtype = self.graphdef, self.pad_id, self.cache_dtype

            def program(trainable, frozen, packed, tokens, mask, limits, stops, seeds, per_row, shared, call_id):
                self.traces += 1  # runs only while tracing
                note_trace()
                model = nnx.merge(graphdef, trainable, frozen)
                data = {**shared, **per_row} if per_row else shared
                return _decode(model, packed, tokens, mask, limits, stops, seeds, data, length=length, sampling=sampling,
                               adapter=adapter, processor=processor, pad_id=pad_id, cache_dtype=cache_dtype,
                               top_logprobs=top_logprobs, call_id=call_id if cancellable else None)

            self._programs[key] = jax.jit(program)
        return self._programs[key]


def _split_processor_data(processor, data, n: int, rows: int) -> tuple[Any, dict]:
    """(shared data, per-row entries padded with zero rows to ``rows``) per ``LogitsProcessor.row_fields``."""
    fields = processor.row_fields if processor is not None else ()
    if not fields:
        return data, {}
    if not isinstance(data, dict) or any(f not in data for f in fields):
        raise UserError(f"generate: processor_data must be a dict with the per-row entries {fields}")

    def pad(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] != n:
            raise UserError(f"generate: per-row processor data needs a leading dim of {n} rows, got {x.shape}")
        return np.concatenate([x, np.zeros((rows - n, *x.shape[1:]), x.dtype)]) if rows > n else x

    per_row = {f: jax.tree.map(pad, data[f]) for f in fields}
    return {k: v for k, v in data.items() if k not in fields}, per_row


def _decode(model, packed, tokens, mask, limits, stops, seeds, data, *, length, sampling, adapter, processor, pad_id,
            cache_dtype, top_logprobs=0, call_id=None):
    """tokens int32 [B, P] (left-padded), mask bool [B, P], limits int32 [B] (0 = idle row), stops int32
    [B, 8], seeds uint32 [B, 2] -> (tokens int32 [B, length], logprobs f32 [B, length], lengths int32 [B],
    stopped bool [B]), then with top_logprobs = k > 0 (top ids int32 [B, length, k], their logprobs f32).
    call_id: int32 scalar of ``cancellation.registered``, or None (nothing polled)."""
    b, p = tokens.shape
    # ``packed``: Sampler.packed_kernels(), the kernels in the native few-row product's layout (or {}).
    with packed_weights(packed):
        cache, first_logits = prefill(model, tokens, mask, p + length, cache_dtype, adapter)
    proc_state = processor.init(tokens, mask, data) if processor is not None else ()
    row_keys = seed_keys(seeds)

    k = top_logprobs

    def choose(logits, step, proc_state):
        raw = logits = logits.astype(jnp.float32)
        if processor is not None:
            logits = processor.process(proc_state, logits, step, data)
        tok = sample_tokens(logits, step_keys(row_keys, step), sampling)
        # The full log-softmax only when alternatives are asked for (0.8 ms a step on XLA:CPU, chosen_logprobs);
        # then the chosen token's log-prob is read from it rather than normalised a second time.
        if not k:
            return tok, chosen_logprobs(raw, tok), ()
        full = jax.nn.log_softmax(raw, axis=-1)
        return tok, jnp.take_along_axis(full, tok[:, None], axis=-1)[:, 0], jax.lax.top_k(full, k)[::-1]

    def put_top(out_top, top, step, done):
        """Writes step ``step``'s (ids [B, k], logprobs [B, k]) into the [B, length, k] outputs (finished rows:
        the pad id and 0, like the tokens)."""
        if not k:
            return out_top
        ids, vals = jnp.where(done[:, None], pad_id, top[0]), jnp.where(done[:, None], 0.0, top[1])
        return (jax.lax.dynamic_update_slice(out_top[0], ids[:, None], (0, step, 0)),
                jax.lax.dynamic_update_slice(out_top[1], vals[:, None], (0, step, 0)))

    idle = limits <= 0
    tok, lp, top = choose(first_logits, jnp.int32(0), proc_state)
    tok, lp, lengths, done, stopped = advance(tok, lp, idle, jnp.zeros_like(limits), limits, stops, pad_id)
    if processor is not None:
        proc_state = processor.update(proc_state, tok, data)
    out_tokens = jnp.full((b, length), pad_id, jnp.int32).at[:, 0].set(tok)
    out_logp = jnp.zeros((b, length), jnp.float32).at[:, 0].set(lp)
    out_top = (jnp.full((b, length, k), pad_id, jnp.int32), jnp.zeros((b, length, k), jnp.float32)) if k else ()
    out_top = put_top(out_top, top, 0, idle)

    def cond(carry):
        step, _, _, done, *_ = carry
        return (step < length) & ~jnp.all(done)

    def body(carry):
        step, cache, tok, done, stopped, lengths, out_tokens, out_logp, proc_state, out_top = carry
        if call_id is not None:  # rows the host stopped (their client left) end here, as if at their limit
            done = done | cancelled_rows(call_id, step, b)
        with packed_weights(packed):
            out = model(tok[:, None], cache=cache, adapter=adapter)
        new, lp, top = choose(out.logits[:, 0], step, proc_state)
        out_top = put_top(out_top, top, step, done)
        new, lp, lengths, done, hit = advance(new, lp, done, lengths, limits, stops, pad_id)
        if processor is not None:
            proc_state = processor.update(proc_state, new, data)
        out_tokens = jax.lax.dynamic_update_slice(out_tokens, new[:, None], (0, step))
        out_logp = jax.lax.dynamic_update_slice(out_logp, lp[:, None], (0, step))
        return step + 1, out.cache, new, done, stopped | hit, lengths, out_tokens, out_logp, proc_state, out_top

    carry = (jnp.int32(1), cache, tok, done, stopped, lengths, out_tokens, out_logp, proc_state, out_top)
    _, _, _, _, stopped, lengths, out_tokens, out_logp, _, out_top = jax.lax.while_loop(cond, body, carry)
    # The batch layout the inputs were placed with, so each process finds its own rows on its own devices.
    top = tuple(constrain(x, "batch", None, None) for x in out_top)
    return (constrain(out_tokens, "batch", None), constrain(out_logp, "batch", None), constrain(lengths, "batch"),
            constrain(stopped, "batch"), *top)


# -- generate()'s process-wide Samplers ---------------------------------------------------------------------
_SHARED: collections.OrderedDict = collections.OrderedDict()
_SHARED_MAX = 4


@contextlib.contextmanager
def shared_sampler(model, *, pad_id: int, cache_dtype=None, prompt_buckets=None, batch_buckets=None,
                   min_prompt_bucket: int = 16, runtime=None):
    """The cached Sampler for ``model``'s graphdef and these settings, holding ``model``'s weights while the
    ``with`` block runs (they are dropped afterwards, so the cache never keeps a model alive)."""
    graphdef, trainable, frozen = split_model(model)
    if runtime is None:
        runtime = runtime_for((trainable, frozen))
    key = (graphdef, int(pad_id), cache_dtype, tuple(prompt_buckets or ()), tuple(batch_buckets or ()),
           min_prompt_bucket, runtime)
    sampler = _SHARED.pop(key, None)
    if sampler is None:
        sampler = Sampler((graphdef, trainable, frozen), pad_id=pad_id, runtime=runtime, cache_dtype=cache_dtype,
                          prompt_buckets=prompt_buckets, batch_buckets=batch_buckets,
                          min_prompt_bucket=min_prompt_bucket)
    sampler.trainable, sampler.frozen = trainable, frozen
    _SHARED[key] = sampler
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.popitem(last=False)
    try:
        yield sampler
    finally:
        sampler.trainable = sampler.frozen = None
