"""``SlotDecoder``: continuous (iteration-level) batching over a fixed number of decoding slots.

The ``Sampler`` decodes one batch from prefill to its longest row's end; a server whose requests arrive at
different times then runs half-empty batches. Here B slots share one KV cache of S slots per row and stay
warm: between chunks of a few decoding steps finished rows leave and new ones join.

- Shared ``end``: every row writes its next token into the same cache slot ``end`` (as in the Sampler), and a
  row's RoPE positions come from its own count of valid slots (``llama.py``), so a row may join at any step.
  ``admit`` prefills the new rows' prompts (left-padded to a prompt bucket P, the rows padded to a batch bucket
  by repeating the last one) on a fresh P-slot cache, exactly as the Sampler's prefill, chooses each row's
  first token, and copies the rows into the shared cache at slots [end - P, end) (``kv_cache.put_rows``; their
  ``valid`` False everywhere else). If ``end`` < P, ``end`` first jumps to P: the live rows then just have a
  gap of invalid slots.
- ``step`` runs one jitted chunk of up to ``chunk`` decoding steps for all B slots (a ``lax.while_loop`` that
  also stops once every slot is done, or, when rows are waiting, once some row finishes), and hands back the
  rows that finished. Free slots decode pad tokens that nobody reads; when the only live row is slot 0 (which
  admission fills first) chunks decode that row alone, so one client does not pay for B: its state is copied
  out of the shared one once and kept apart (``solo``) until a second row joins or a compaction needs the
  shared state, and copied back then; once the decoder is empty it is dropped instead (the next admission
  rewrites slot 0 whole). Both copy programs compile together, with the first solo chunk. (Copying it out and back in every chunk moved 2 x S slots
  of every layer per chunk: with a default cache of 5824 slots for SmolLM2, 270 MB per 8 tokens.)
- Space: each admission keeps ``end + (the most tokens any live row may still feed) <= S``, and a decoding
  step raises both sides by one, so live rows never run out of slots; rows that would break it wait (first
  come, first served: a row never overtakes an earlier one) until rows finish. A row fits at all if
  ``bucket(prompt) + max_new_tokens - 1 <= S`` (``fits``; ``admit`` refuses others with a ``UserError``).
- Compaction (``kv_cache.shift_slots``, one program per power-of-two window): the slots before the oldest live
  row's first one are dead for every row but still read by each step's attention (it covers slots [0, end]),
  so the live window is moved down to slot 0 when the dead part is a quarter of ``end`` (and at least
  ``MIN_COMPACTION`` slots), or when it would make room for a waiting row. It copies the window only, not all S
  slots; a window bucket seen for the first time compiles its (small) program then.

Exactness: a row's tokens and log-probs depend on its prompt, seed and limits only: the draw's key is
``fold_in(fold_in(key(seed), 0), t)`` for the row's token number t (the Sampler's with one int seed per
prompt), and the attention sees the same keys and values at other slot numbers (sums over more masked slots
round alike up to f32 summation order). One program per (admission rows bucket, prompt bucket; a server admits one
row at a time, so per prompt bucket), two chunk programs (one row, B rows), the two copies of slot 0's state, a
few compaction programs and, once a row is first cancelled (``cancel``: its client left), the program that frees
its slot: nothing recompiles once those are warm. One device only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from reclm_jax.errors import UserError
from reclm_jax.models.generation import (MAX_STOP_IDS, SamplingConfig, advance, bucket, chosen_logprobs, left_pad,
                                         prefill, sample_tokens, seed_keys, step_keys)
from reclm_jax.models.kv_cache import KVCache, init_cache, put_rows, shift_slots, update_slice
from reclm_jax.models.lora import mesh_of
from reclm_jax.models.kernels import packed_weights
from reclm_jax.models.packed_kernels import PackedKernels
from reclm_jax.models.sampler import note_trace, row_seeds, split_model


def slot_fits(prompt_len: int, limit: int, cache_len: int, prompt_buckets: Sequence[int] | None = None,
              min_prompt_bucket: int = 16) -> bool:
    """Whether a row fits a SlotDecoder of ``cache_len`` slots: its prompt bucket, then ``limit - 1`` fed tokens."""
    try:
        return bucket(prompt_len, prompt_buckets, min_prompt_bucket) + limit - 1 <= cache_len
    except UserError:  # longer than the largest prompt bucket
        return False


# Dead front slots worth a compaction (besides a quarter of ``end``): fewer cost less attention than the copy, and
# a single row's prompt padding (< its bucket) is no reason to move the cache.
MIN_COMPACTION = 64


class SlotState(NamedTuple):
    """The device side of the slots (B = slots); donated to and returned by every program."""

    cache: KVCache  # B rows of S slots, one shared end
    tok: jnp.ndarray  # int32 [B]: the token each row feeds at its next step
    done: jnp.ndarray  # bool [B]: finished or free
    stopped: jnp.ndarray  # bool [B]: ended on a stop id
    lengths: jnp.ndarray  # int32 [B]: tokens generated so far
    limits: jnp.ndarray  # int32 [B]: max_new_tokens (0: free)
    stops: jnp.ndarray  # int32 [B, 8]: stop ids, -1 = unused
    seeds: jnp.ndarray  # uint32 [B, 2]: (seed, stream)


@dataclasses.dataclass(frozen=True)
class SlotRequest:
    """One row to decode: a non-empty prompt, its token limit (>= 1), its uint32 seed (stream 0: the Sampler's
    per-prompt seed), at most 8 stop ids, and ``tag``: anything the caller uses to recognise it."""

    prompt: Sequence[int]
    limit: int
    seed: int = 0
    stop_ids: Sequence[int] = ()
    tag: Any = None


@dataclasses.dataclass
class FinishedRow:
    tag: Any
    tokens: list[int]  # the generated ids, the stop token included
    logprobs: list[float]  # their model log-probabilities
    stopped: bool  # ended on a stop id (False: it hit its limit)


@dataclasses.dataclass
class _Slot:
    request: SlotRequest
    first: int  # the cache slot of its first prompt token
    tokens: list[int]
    logprobs: list[float]


class SlotDecoder:
    """Continuous batching for one model and one (sampling, adapter) setting; see the module docstring.

    model: as the Sampler's. slots: B, rows decoded together. cache_len: S, cache slots per row. chunk: decoding
    steps per ``step`` call (the trade-off: a new row waits up to a chunk to join, and each chunk costs one
    dispatch and one host round trip). batch_buckets: admission row counts (default powers of two up to B, and
    B); prompt buckets as the Sampler's. packer: the ``packed_kernels.PackedKernels`` to take the native products' packed
    kernels from (a server passes its Sampler's, so the weights are packed once); default its own.
    """

    def __init__(self, model, *, pad_id: int, slots: int, cache_len: int, sampling: SamplingConfig = SamplingConfig(),
                 adapter: str | None = None, chunk: int = 8, cache_dtype: str | None = None,
                 prompt_buckets: Sequence[int] | None = None, min_prompt_bucket: int = 16,
                 batch_buckets: Sequence[int] | None = None, packer: PackedKernels | None = None):
        self.graphdef, self.trainable, self.frozen = split_model(model)
        mesh = mesh_of((self.trainable, self.frozen))
        # On a one-device mesh every program's state comes back on it, replicated (so the next call sees the
        # same shardings and reuses its program; left to propagation, some leaves came back with other specs).
        self._pinned = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
        if mesh is not None and mesh.devices.size > 1:
            raise UserError("SlotDecoder: the weights live on a mesh of several devices; continuous batching runs on one "
                            "device (use the Sampler)")
        if slots < 1 or chunk < 1:
            raise UserError(f"SlotDecoder: slots and chunk must be >= 1, got {slots} and {chunk}")
        self.pad_id, self.slots, self.cache_len, self.chunk = int(pad_id), int(slots), int(cache_len), int(chunk)
        self.sampling, self.adapter, self.cache_dtype = sampling, adapter, cache_dtype
        self.prompt_buckets = tuple(prompt_buckets) if prompt_buckets else None
        self.min_prompt_bucket = min_prompt_bucket
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else tuple(sorted(
            {bucket(n) for n in range(1, slots + 1) if bucket(n) < slots} | {slots}))
        if self.cache_len < self._prompt_bucket(1):
            raise UserError(f"SlotDecoder: cache_len {cache_len} is below the smallest prompt bucket")
        self.traces = 0  # programs traced (= compiled)
        self.steps = 0  # decoding steps run
        self.slot_steps = 0  # sum over steps of the slots live at the step (occupancy = slot_steps / steps)
        self.chunks = 0
        self.compactions = 0
        self.solo_copies = 0  # copies of slot 0's state out of the shared state and back (see step)
        self._programs: dict[tuple, Any] = {}
        # The native few-row products' packed kernels, kept per set of weights; a server shares its Sampler's.
        self._packer = packer if packer is not None else PackedKernels(self.graphdef)
        self._cfg = nnx.merge(self.graphdef, self.trainable, self.frozen).config
        self.reset()

    # -- bookkeeping --------------------------------------------------------------------------------------
    def reset(self) -> list[Any]:
        """Empties every slot (e.g. after a failed program, whose donated state is gone); returns the tags of
        the rows that were live or finished but not yet handed back."""
        tags = [s.request.tag for s in getattr(self, "_rows", []) if s is not None]
        tags += [f.tag for f in getattr(self, "_finished", [])]
        b = self.slots
        cache = init_cache(self._cfg, b, self.cache_len, jnp.dtype(self.cache_dtype) if self.cache_dtype else None)
        self._state = SlotState(cache, jnp.full((b,), self.pad_id, jnp.int32), jnp.ones((b,), bool),
                                jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32),
                                jnp.full((b, MAX_STOP_IDS), -1, jnp.int32), jnp.zeros((b, 2), jnp.uint32))
        if self._pinned is not None:
            self._state = jax.device_put(self._state, self._pinned)
        self._solo: SlotState | None = None  # slot 0's state alone while it is the only live row (see step)
        self._rows: list[_Slot | None] = [None] * b
        self._finished: list[FinishedRow] = []
        self._end = 0
        return tags

    def release(self) -> bool:
        """Frees the slot cache of an idle decoder (its programs stay compiled; the next ``admit`` allocates a
        new cache); returns whether it was idle."""
        if self.live or self._finished:
            return False
        self._state = self._solo = None
        return True

    @property
    def holds_cache(self) -> bool:
        return self._state is not None

    @property
    def live(self) -> int:
        """Slots holding a row that is still decoding."""
        return sum(s is not None for s in self._rows)

    def progress(self) -> list[tuple[Any, list[int]]]:
        """(tag, tokens generated so far) of every live row (for streaming: a row's first token is there once
        ``admit`` returns, the others after each ``step``). The lists are the decoder's own, which later steps
        extend: copy what you keep."""
        return [(s.request.tag, s.tokens) for s in self._rows if s is not None]

    @property
    def free(self) -> int:
        return self.slots - self.live

    @property
    def end(self) -> int:
        """The shared cache slot the next step writes."""
        return self._end

    def _prompt_bucket(self, n: int) -> int:
        return bucket(n, self.prompt_buckets, self.min_prompt_bucket)

    def fits(self, prompt_len: int, limit: int) -> bool:
        """Whether a row of this prompt length and token limit can ever be decoded here (else: the Sampler)."""
        return slot_fits(prompt_len, limit, self.cache_len, self.prompt_buckets, self.min_prompt_bucket)

    def _need(self, extra: int = 0) -> int:
        """The most tokens any live row (or a new one feeding ``extra``) may still feed into the cache."""
        rem = [s.request.limit - len(s.tokens) for s in self._rows if s is not None]
        return max(rem + [extra])

    def _room(self, p: int, extra: int) -> bool:
        return max(self._end, p) + self._need(extra) <= self.cache_len

    def _dead(self) -> int:
        """Slots before the oldest live row's first one (dead for every row)."""
        firsts = [s.first for s in self._rows if s is not None]
        return min(firsts) if firsts else self._end

    # -- admission ----------------------------------------------------------------------------------------
    def admit(self, requests: Sequence[SlotRequest]) -> int:
        """Admits the longest prefix of ``requests`` that has free slots and cache room now (first come, first
        served); returns how many were admitted. Rows finished by their first token come back from the next
        ``step``."""
        for r in requests:
            self._check(r)
        if self._state is None:
            self.reset()
        if self.live == 0:
            self._end = 0  # nothing live: the whole cache is free
        take: list[SlotRequest] = []
        for r in requests[:self.free]:
            p = self._prompt_bucket(max(len(x.prompt) for x in take + [r]))
            extra = max(x.limit - 1 for x in take + [r])
            if not self._room(p, extra) and self._dead() > 0:
                self._compact()
            if not self._room(p, extra):
                break
            take.append(r)
        if take:
            self._admit(take)
        return len(take)

    def _check(self, r: SlotRequest) -> None:
        if len(r.prompt) == 0:
            raise UserError("SlotDecoder: every prompt needs at least one token")
        if r.limit < 1:
            raise UserError(f"SlotDecoder: max_new_tokens must be >= 1, got {r.limit}")
        if len(r.stop_ids) > MAX_STOP_IDS:
            raise UserError(f"SlotDecoder: at most {MAX_STOP_IDS} stop ids per row")
        if not self.fits(len(r.prompt), r.limit):
            raise UserError(f"SlotDecoder: a prompt of {len(r.prompt)} tokens (bucket "
                            f"{self._prompt_bucket(len(r.prompt)) if len(r.prompt) else 0}) and {r.limit} new "
                            f"tokens do not fit {self.cache_len} cache slots")

    def _admit(self, take: list[SlotRequest]) -> None:
        if self.live == 0:
            # Slot 0 is the first free slot and is rewritten whole (its ``valid`` row included): no copy back.
            self._solo = None
        self._unsolo()  # admission writes into the shared state
        cap = max(self.batch_buckets)  # rows per admission program (a server admits one at a time, see engine.py)
        for i in range(0, len(take), cap):
            self._admit_rows(take[i:i + cap])

    def _admit_rows(self, take: list[SlotRequest]) -> None:
        n = len(take)
        nb = bucket(n, self.batch_buckets)
        p = self._prompt_bucket(max(len(r.prompt) for r in take))
        end = max(self._end, p)
        free = [i for i, s in enumerate(self._rows) if s is None]
        # Padding rows repeat the last row (same data into the same slot): nothing else is overwritten.
        padded = take + [take[-1]] * (nb - n)
        rows = np.asarray(free[:n] + [free[n - 1]] * (nb - n), np.int32)
        tokens, mask = left_pad([r.prompt for r in padded], p, nb, self.pad_id)
        limits = np.asarray([r.limit for r in padded], np.int32)
        stops = np.full((nb, MAX_STOP_IDS), -1, np.int32)
        for i, r in enumerate(padded):
            stops[i, :len(r.stop_ids)] = list(r.stop_ids)
        seeds = row_seeds([r.seed for r in padded], nb)
        program = self._program("admit", nb, p)
        self._state, tok, lp, done, stopped = program(self.trainable, self.frozen, self._state, tokens, mask, rows,
                                                      limits, stops, seeds, np.int32(end), self._packed())
        tok, lp, done, stopped = (np.asarray(x) for x in (tok, lp, done, stopped))
        self._end = end
        for i, r in enumerate(take):
            slot = _Slot(r, end - len(r.prompt), [int(tok[i])], [float(lp[i])])
            if done[i]:  # its first token ended it: the slot is free again at once (its state says done)
                self._finished.append(FinishedRow(r.tag, slot.tokens, slot.logprobs, bool(stopped[i])))
            else:
                self._rows[int(rows[i])] = slot

    def cancel(self, drop) -> int:
        """Frees the slots of the rows whose tag ``drop(tag)`` accepts (a client that left), live or finished
        but not handed back; nothing of them comes back from ``step``. Returns how many live rows it freed."""
        self._finished = [f for f in self._finished if not drop(f.tag)]
        gone = [i for i, s in enumerate(self._rows) if s is not None and drop(s.request.tag)]
        if self._solo is not None and gone:
            # gone is slot 0, the only live row, decoded apart: its state is dropped, as when such a row
            # finishes (the next admission rewrites slot 0 whole), without copying its cache back first.
            self._solo = None
        elif gone:
            mask = np.zeros((self.slots,), bool)
            mask[gone] = True
            self._state = self._program("cancel")(self._state, mask)
        for i in gone:
            self._rows[i] = None
        return len(gone)

    # -- decoding -----------------------------------------------------------------------------------------
    def step(self, waiting: bool = False) -> list[FinishedRow]:
        """Runs one chunk (if any row is live) and returns the rows finished since the last call, in no
        particular order. ``waiting``: rows wait for a slot, so the chunk ends as soon as some row finishes."""
        if self.live:
            dead = self._dead()
            if dead >= max(MIN_COMPACTION, self._end // 4):
                self._compact()
            budget = min(self.chunk, self.cache_len - self._end)
            if budget < 1:  # admission keeps room for every live row: reaching this is a bug, not a state to wait in
                raise RuntimeError(f"SlotDecoder: no cache room for {self.live} live rows at end {self._end}")
            width = self._width()
            if width == 1 and self._solo is None:
                if ("solo_in",) not in self._programs:
                    # Compiled with solo_out, not when a second row first joins in the middle of serving.
                    solo = jax.eval_shape(self._program("solo_out"), self._state)
                    self._program("solo_in").lower(self._state, solo).compile()
                self._solo = self._program("solo_out")(self._state)
                self.solo_copies += 1
            elif width > 1:
                self._unsolo()
            out = self._program("chunk", width)(self.trainable, self.frozen, self._solo if width == 1 else self._state,
                                                np.int32(budget), np.bool_(waiting), self._packed())
            st, toks, lps, steps = out
            if width == 1:
                self._solo = st
            else:
                self._state = st
            toks, lps, steps = np.asarray(toks), np.asarray(lps), int(steps)
            lengths, done, stopped = (np.asarray(x) for x in (st.lengths, st.done, st.stopped))
            self._end += steps
            self.chunks += 1
            self.steps += steps
            for i, s in enumerate(self._rows):
                if s is None:
                    continue
                k = int(lengths[i]) - len(s.tokens)
                # A live row's new tokens are the chunk's first k columns (it is live until it is done).
                self.slot_steps += k
                s.tokens += toks[i, :k].tolist()
                s.logprobs += lps[i, :k].tolist()
                if done[i]:
                    self._finished.append(FinishedRow(s.request.tag, s.tokens, s.logprobs, bool(stopped[i])))
                    self._rows[i] = None
        out, self._finished = self._finished, []
        return out

    def _width(self) -> int:
        """The rows a chunk decodes: one when the only live row is slot 0 (admission fills the lowest free slots),
        so one client does not pay for B; else all B. Only these two: a width in between would compile the first
        time a load passed through it, in the middle of serving (measured: 2-5 s per program for SmolLM2)."""
        top = max(i for i, s in enumerate(self._rows) if s is not None) + 1
        return 1 if top == 1 else self.slots

    def _unsolo(self) -> None:
        """Copies slot 0's separate state (if any) back into the shared one."""
        if self._solo is not None:
            self._state = self._program("solo_in")(self._state, self._solo)
            self._solo = None
            self.solo_copies += 1

    def _compact(self) -> None:
        self._unsolo()
        dead = self._dead()
        width = min(bucket(self._end - dead), self.cache_len)
        start = min(dead, self.cache_len - width)  # the window must stay inside the cache
        if start <= 0:
            return
        self._state = self._program("compact", width)(self._state, np.int32(start))
        self._end -= start
        for s in self._rows:
            if s is not None:
                s.first -= start
        self.compactions += 1

    # -- programs -----------------------------------------------------------------------------------------
    def _program(self, kind: str, *shape: int):
        key = (kind, *shape)
        if key not in self._programs:
            build = {"admit": self._admit_fn, "chunk": self._chunk_fn, "compact": self._compact_fn,
                     "solo_out": self._solo_out_fn, "solo_in": self._solo_in_fn, "cancel": self._cancel_fn}[kind]
            fn = build(*shape)
            # solo_out keeps the shared state (it is copied back into later), so it donates nothing.
            donate = {"compact": (0,), "solo_in": (0,), "cancel": (0,), "solo_out": ()}.get(kind, (2,))
            self._programs[key] = jax.jit(fn, donate_argnums=donate)
        return self._programs[key]

    def _packed(self) -> dict:
        return self._packer(self.trainable, self.frozen)

    def _traced(self) -> None:
        self.traces += 1  # runs only while tracing
        note_trace()

    def _pin(self, state: SlotState) -> SlotState:
        if self._pinned is None:
            return state
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self._pinned), state)

    def _admit_fn(self, rows_bucket: int, p: int):
        graphdef, sampling, adapter, cache_dtype = self.graphdef, self.sampling, self.adapter, self.cache_dtype

        def admit(trainable, frozen, state, tokens, mask, rows, limits, stops, seeds, end, packed):
            """tokens int32 [n, P], mask bool [n, P], rows int32 [n] (the slots), limits int32 [n], stops int32
            [n, 8], seeds uint32 [n, 2], end int32 -> (state, first tokens int32 [n], their logprobs f32 [n],
            done bool [n], stopped bool [n])."""
            self._traced()
            model = nnx.merge(graphdef, trainable, frozen)
            with packed_weights(packed):
                small, logits = prefill(model, tokens, mask, p, cache_dtype, adapter)
            logits = logits.astype(jnp.float32)
            tok = sample_tokens(logits, step_keys(seed_keys(seeds), jnp.int32(0)), sampling)
            lp = chosen_logprobs(logits, tok)
            none = jnp.zeros_like(limits)
            tok, lp, lengths, done, stopped = advance(tok, lp, none.astype(bool), none, limits, stops, self.pad_id)
            cache = put_rows(state.cache._replace(end=end), small, rows, end - p)
            state = SlotState(cache, state.tok.at[rows].set(tok), state.done.at[rows].set(done),
                              state.stopped.at[rows].set(stopped), state.lengths.at[rows].set(lengths),
                              state.limits.at[rows].set(limits), state.stops.at[rows].set(stops),
                              state.seeds.at[rows].set(seeds))
            return self._pin(state), tok, lp, done, stopped

        return admit

    def _chunk_fn(self, rows: int):
        graphdef, sampling, adapter, pad_id, width = self.graphdef, self.sampling, self.adapter, self.pad_id, self.chunk

        def chunk(trainable, frozen, state, budget, stop_early, packed):
            """state: ``rows`` slots (all B, or slot 0's ``solo`` state); budget int32 (steps at most, <= chunk),
            stop_early bool -> (state, tokens int32 [rows, chunk] and logprobs f32 [rows, chunk] of each step (pad
            and 0 for done rows), steps taken int32)."""
            self._traced()
            model = nnx.merge(graphdef, trainable, frozen)
            b = rows
            row_keys = seed_keys(state.seeds)

            def cond(c):
                i, st, _, _, finished = c
                return (i < budget) & ~jnp.all(st.done) & ~(stop_early & finished)

            def body(c):
                i, st, out_t, out_l, finished = c
                with packed_weights(packed):
                    out = model(st.tok[:, None], cache=st.cache, adapter=adapter)
                logits = out.logits[:, 0].astype(jnp.float32)
                new = sample_tokens(logits, step_keys(row_keys, st.lengths), sampling)  # each row's own step
                new, lp, lengths, done, hit = advance(new, chosen_logprobs(logits, new), st.done, st.lengths,
                                                      st.limits, st.stops, pad_id)
                out_t = jax.lax.dynamic_update_slice(out_t, new[:, None], (0, i))
                out_l = jax.lax.dynamic_update_slice(out_l, lp[:, None], (0, i))
                st = st._replace(cache=out.cache, tok=new, done=done, stopped=st.stopped | hit, lengths=lengths)
                return i + 1, st, out_t, out_l, finished | jnp.any(done & ~c[1].done)

            carry = (jnp.int32(0), state, jnp.full((b, width), pad_id, jnp.int32), jnp.zeros((b, width), jnp.float32),
                     jnp.bool_(False))
            steps, state, out_t, out_l, _ = jax.lax.while_loop(cond, body, carry)
            return self._pin(state), out_t, out_l, steps

        return chunk

    def _solo_out_fn(self):
        def solo_out(full):
            """The B-slot state -> slot 0's state alone (1 row of S slots; ``end`` the shared one)."""
            self._traced()
            return self._pin(_map_rows(full, lambda x, axis: jax.lax.slice_in_dim(x, 0, 1, axis=axis)))

        return solo_out

    def _solo_in_fn(self):
        def solo_in(full, solo):
            """Writes slot 0's state back into the B-slot state (in place: ``full`` is donated), with its ``end``."""
            self._traced()
            parts: list = []
            _map_rows(solo, lambda x, axis: parts.append(x) or x)  # the same visiting order below
            rows = iter(parts)
            state = _map_rows(full, lambda x, axis: update_slice(x, next(rows), (0,) * x.ndim))
            return self._pin(state._replace(cache=state.cache._replace(end=solo.cache.end)))

        return solo_in

    def _compact_fn(self, width: int):
        def compact(state, start):
            self._traced()
            return self._pin(state._replace(cache=shift_slots(state.cache, start, width)))

        return compact

    def _cancel_fn(self):
        def cancel(state, mask):
            """mask bool [B]: the rows to end now (done, limit 0: free slots, which the chunks skip)."""
            self._traced()
            return self._pin(state._replace(done=state.done | mask, limits=jnp.where(mask, 0, state.limits)))

        return cancel


def _map_rows(state: SlotState, fn) -> SlotState:
    """``fn(array, row_axis)`` over every per-row array of ``state`` (not ``end``): a stacked cache has its rows
    on axis 1, everything else on axis 0."""
    cache = state.cache
    stacked = not isinstance(cache.keys, tuple)

    def bufs(x):
        return fn(x, 1) if stacked else tuple(fn(k, 0) for k in x)

    cache = KVCache(bufs(cache.keys), bufs(cache.values), fn(cache.valid, 0), cache.end)
    return SlotState(cache, *(fn(x, 0) for x in state[1:]))
