"""The batching engine: one model, its tokenizer, one ``Sampler`` (static batches) and the continuous scheduler.

A ``Job`` is one HTTP request: its prompts x n rows, their per-row settings (token limits, seeds, stop ids: all
traced, so they never split a batch) and its ``key``: what must compile together (sampling settings, adapter,
whether top alternatives are kept). The shared ``MicroBatcher`` puts only jobs of one key in a batch and calls
``Engine.run_batch`` on its worker thread; rows are decoded ``max_batch`` at a time (batch and prompt lengths
padded to the Sampler's buckets, so a warm server does not recompile), then each job's ``finish`` builds its
response on the same thread. A failing decode fails that batch's jobs only; a failing ``finish`` its own job.

Continuous batching (``--batching continuous``, the default): jobs without a logits processor or kept
alternatives whose rows fit the slot cache (``continuous_ok``) go to ``scheduler`` instead
(``continuous.py``: ``SlotDecoder``s, one per key, whose rows leave and join between chunks of decoding steps).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reclm_jax.errors import UserError
from reclm_jax.models.generation import MAX_STOP_IDS, SamplingConfig
from reclm_jax.service.http import BadRequest
from reclm_jax.serve.config import MAX_TOP_LOGPROBS
from reclm_jax.serve.protocol import ParsedRequest


@dataclasses.dataclass(frozen=True)
class Row:
    """One decoded row: ``tokens`` (the generated ids, the stop token included), their model ``logprobs``,
    ``stopped`` (ended on a stop id) and, when asked for, the top alternatives per token (ids, logprobs)."""

    tokens: list[int]
    logprobs: list[float]
    stopped: bool
    top_ids: np.ndarray | None = None  # int32 [len(tokens), k]
    top_logprobs: np.ndarray | None = None  # float32 [len(tokens), k]


@dataclasses.dataclass
class Job:
    key: tuple  # (SamplingConfig, adapter, kept alternatives, constrained): what must compile together
    prompts: list[list[int]]  # one per row
    limits: list[int]
    seeds: list[int]  # uint32 per row
    stop_ids: list[list[int]]
    finish: Callable[[list[Row]], Any]  # rows -> the response (runs on the worker thread)
    constraints: list | None = None  # one decoding.ListConstraint per row (constrained jobs), else None
    # (row, its tokens so far) -> None, on the decode thread after each admission and chunk (continuous jobs
    # only; a streamed response sends text as it is decoded), else None
    progress: Callable[[int, list[int]], None] | None = None
    # (row, its Row) -> None, on the decode thread as each row finishes (continuous jobs only; a streamed
    # response sends that row's last chunk then, not when the job's last row is done), else None
    row_done: Callable[[int, Row], None] | None = None
    # Set when the request's client left (``MicroBatcher.submit`` cancelled): ``run_batch`` skips its rows not
    # yet decoded. (A continuous job is withdrawn by ``ContinuousScheduler.cancel`` instead.)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def size(self) -> int:
        return len(self.prompts)

    def cancel(self) -> None:
        self.cancelled.set()


def row_seed(seed: int, row: int) -> int:
    """uint32 seed of a request's row ``row`` from the request's int ``seed`` (any size, negative too): rows
    differ, and a request with a seed samples the same whatever batch it lands in."""
    return int(np.random.SeedSequence([seed % 2 ** 64, row]).generate_state(1)[0])


class Engine:
    """model: a ``LlamaForCausalLM`` (adapters attached, if any); ``adapter`` the name requests decode with
    (None: the base weights or a merged adapter). ``max_model_len`` 0: the config's max_position_embeddings."""

    def __init__(self, model, tokenizer, model_dir: str | Path, *, adapter: str | None = None,
                 max_batch: int = 16, max_model_len: int = 0, catalogue=None, decode_chunk: int = 8,
                 cache_len: int = 0):
        from reclm_jax.buckets import bucket
        from reclm_jax.models.sampler import Sampler
        from reclm_jax.models.special_tokens import resolve_stop_ids
        from reclm_jax.models.tokenizer import pad_token_id

        self.tokenizer, self.model_dir, self.adapter = tokenizer, Path(model_dir), adapter
        self.catalogue = catalogue  # a decoding.ConstrainedCatalogue: requests may then ask for a constraint
        self.vocab_size = int(model.config.vocab_size)
        self.max_model_len = max_model_len or int(model.config.max_position_embeddings)
        self.stop_ids = resolve_stop_ids(tokenizer, model_dir)
        if len(self.stop_ids) > MAX_STOP_IDS:
            raise UserError(f"{model_dir} declares {len(self.stop_ids)} stop ids {self.stop_ids}; the Sampler "
                            f"supports {MAX_STOP_IDS}")
        self.pad_id = pad_token_id(tokenizer)
        self.max_batch = max_batch
        # Batch rows: powers of two up to max_batch, and max_batch itself: a handful of programs per setting.
        buckets = sorted({bucket(n) for n in range(1, max_batch + 1) if bucket(n) < max_batch} | {max_batch})
        self.sampler = Sampler(model, pad_id=self.pad_id, stop_ids=self.stop_ids, batch_buckets=buckets)
        self.decode_calls = 0  # Sampler calls (tests and /health read it)
        self.skipped_rows = 0  # rows of static jobs not decoded to their end because their client left (/health)
        self.decode_chunk = decode_chunk
        self.cache_len = cache_len or default_cache_len(model.config, max_batch, self.max_model_len)
        self._scheduler = None
        self._lock = threading.Lock()  # one decode at a time, whichever app's worker thread asks
        # Stop strings come from clients: a bounded cache, so endless distinct strings cannot grow memory.
        self.stop_string_token = functools.lru_cache(maxsize=4096)(self._stop_string_token)

    # -- text <-> tokens (validation calls these on the event loop) ----------------------------------------
    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of a prompt text. Default: the tokenizer's special tokens (BOS) unless the text already
        starts with the BOS string (a chat template that writes it), as training tokenizes prompts
        (``data.pipeline.tokenize_sample``)."""
        if add_special_tokens is None:
            bos = getattr(self.tokenizer, "bos_token", None)
            add_special_tokens = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> str:
        """``messages`` through the tokenizer's chat template (as ``data/chat.py``'s ``hf`` format)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"the model's tokenizer ({self.model_dir}) has no chat template: use /v1/completions")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=continue_final_message)
        except Exception as e:  # jinja's raise_exception (e.g. roles that do not alternate), template errors
            raise UserError(f"the chat template refused these messages: {e}") from None

    def _stop_string_token(self, text: str) -> int | None:
        """The token whose text is exactly ``text``, also after another token (so generating it puts ``text``
        in the output), or None. Such a stop string can also end the row as a stop id, early. (Called through
        ``self.stop_string_token``, a bounded cache of it.)"""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            return None
        before = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        if self.tokenizer.decode(ids) == text and self.tokenizer.decode(before + ids).endswith(text):
            return int(ids[0])
        return None

    # -- jobs ------------------------------------------------------------------------------------------------
    def make_job(self, req: ParsedRequest, finish: Callable[[list[Row]], Any]) -> Job:
        """The rows of ``req``: prompt-major (prompt i's choice j is row i * n + j, OpenAI's choice index)."""
        p = req.params
        sampling = SamplingConfig() if p.greedy else SamplingConfig(p.temperature, p.top_k, p.top_p)
        keep = MAX_TOP_LOGPROBS if p.logprobs else 0
        stops = [] if p.ignore_eos else list(self.stop_ids)
        stops += [t for t in p.stop_token_ids if t not in stops]
        if len(stops) > MAX_STOP_IDS:
            raise BadRequest(f"'stop_token_ids': with the model's own stop ids that is {len(stops)} stop tokens; at "
                             f"most {MAX_STOP_IDS} are supported", param="stop_token_ids")
        for s in p.stop:  # single-token stop strings also stop the row early; the text cut stays the same
            t = self.stop_string_token(s)
            if t is not None and t not in stops and len(stops) < MAX_STOP_IDS:
                stops.append(t)
        prompts, limits, seeds = [], [], []
        for i, ids in enumerate(req.prompts):
            for j in range(p.n):
                prompts.append(list(ids))
                limits.append(p.max_tokens[i])
                r = i * p.n + j
                seeds.append(row_seed(p.seed, r) if p.seed is not None else secrets.randbits(32))
        constrained = req.constraint is not None
        return Job(key=(sampling, self.adapter, keep, constrained), prompts=prompts, limits=limits, seeds=seeds,
                   stop_ids=[stops] * len(prompts), finish=finish,
                   constraints=[req.constraint] * len(prompts) if constrained else None)

    # -- continuous batching -----------------------------------------------------------------------------------
    def continuous_ok(self, job: Job) -> bool:
        """Whether ``job`` can be decoded by a SlotDecoder: no constraint, no alternatives, every row fits."""
        from reclm_jax.models.slot_decoder import slot_fits

        _, _, keep, constrained = job.key
        return not keep and not constrained and all(
            slot_fits(len(p), m, self.cache_len) for p, m in zip(job.prompts, job.limits))

    @property
    def scheduler(self):
        """The continuous-batching loop of this engine (one per engine, shared by its apps; created lazily)."""
        if self._scheduler is None:
            from reclm_jax.serve.continuous import ContinuousScheduler

            self._scheduler = ContinuousScheduler(self)
        return self._scheduler

    def slot_decoder(self, key: tuple):
        """A new SlotDecoder for a ``continuous_ok`` key (``max_batch`` slots of ``cache_len`` each)."""
        from reclm_jax.models.slot_decoder import SlotDecoder

        sampling, adapter, _, _ = key
        return SlotDecoder((self.sampler.graphdef, self.sampler.trainable, self.sampler.frozen), pad_id=self.pad_id,
                           slots=self.max_batch, cache_len=self.cache_len, sampling=sampling, adapter=adapter,
                           chunk=self.decode_chunk, packer=self.sampler.packer,  # one packing for every decoder
                           # Rows join one at a time: one admission program per prompt bucket, never a new one
                           # because of how many requests happened to arrive together (each compile cost 2-7 s
                           # in the middle of a benchmark). A one-row prefill of 256 tokens costs within ~10%
                           # of a row of a batched one on the 2-core dev machine (0.24-0.28 s against 0.23).
                           batch_buckets=(1,))

    @property
    def compiles(self) -> int:
        """Decode programs compiled: the Sampler's and the SlotDecoders'."""
        return self.sampler.traces + (self._scheduler.traces if self._scheduler is not None else 0)

    def run_batch(self, jobs: Sequence[Job]) -> list[Any]:
        """Decodes every row of ``jobs`` (one key), ``max_batch`` rows per Sampler call, then runs each job's
        ``finish``; returns one response or exception per job. Before each call the rows of cancelled jobs are
        dropped; during a call the Sampler polls the jobs (``cancelled=``), so the rows of a job cancelled then
        stop within a few steps, and the call ends early once none of its rows is wanted."""
        sampling, adapter, keep, constrained = jobs[0].key
        pending = [(j, r) for j, job in enumerate(jobs) for r in range(job.size)]
        out: list[list[Row]] = [[] for _ in jobs]
        while True:
            kept = [(j, r) for j, r in pending if not jobs[j].cancelled.is_set()]
            self.skipped_rows += len(pending) - len(kept)
            pending = kept
            if not pending:
                break
            chunk, pending = pending[:self.max_batch], pending[self.max_batch:]
            extra = {}
            if constrained:  # every job of a constrained key carries one constraint per row
                extra = self.catalogue.sampler_kwargs([jobs[j].constraints[r] for j, r in chunk], self.sampler.runtime,
                                                     limits=[jobs[j].limits[r] for j, r in chunk])
            with self._lock:
                res = self.sampler([jobs[j].prompts[r] for j, r in chunk],
                                   max_new_tokens=[jobs[j].limits[r] for j, r in chunk],
                                   seeds=np.asarray([jobs[j].seeds[r] for j, r in chunk], np.int64),
                                   stop_ids=[jobs[j].stop_ids[r] for j, r in chunk], sampling=sampling,
                                   adapter=adapter, top_logprobs=keep,
                                   cancelled=lambda rows=chunk: [jobs[j].cancelled.is_set() for j, _ in rows],
                                   **extra)
                self.decode_calls += 1
            for b, (j, r) in enumerate(chunk):
                n = int(res.lengths[b])
                if jobs[j].cancelled.is_set() and not res.stopped[b] and n < jobs[j].limits[r]:
                    self.skipped_rows += 1  # stopped in the call by its poll
                out[j].append(Row(tokens=res.tokens[b, :n].tolist(), logprobs=res.logprobs[b, :n].tolist(),
                                  stopped=bool(res.stopped[b]),
                                  top_ids=None if res.top_ids is None else res.top_ids[b, :n],
                                  top_logprobs=None if res.top_logprobs is None else res.top_logprobs[b, :n]))
        results: list[Any] = []
        for job, job_rows in zip(jobs, out):
            if job.cancelled.is_set():  # nobody waits for it (the batcher drops results of cancelled jobs)
                results.append(None)
                continue
            try:
                results.append(job.finish(job_rows))
            except Exception as e:  # this job's response failed; its neighbours still get theirs
                results.append(e)
        return results


CACHE_BUDGET_BYTES = 2 << 30  # the default slot cache of one SlotDecoder (K and V, all layers and slots)


def default_cache_len(cfg, slots: int, max_model_len: int) -> int:
    """The default slot cache length: 2 x max_model_len (a row of any length can then join beside the oldest),
    cut to ``CACHE_BUDGET_BYTES`` for ``slots`` rows (rows that do not fit then take the static path); a
    multiple of 16, at least 16."""
    per_slot = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.jnp_dtype).itemsize * slots
    return max(16, min(2 * max_model_len, CACHE_BUDGET_BYTES // per_slot) // 16 * 16)


@functools.cache
def _checkpoint_dtype(model_dir: str) -> str:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    dt = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return dt if dt in ("float32", "bfloat16") else "float32"


def load_engine(model_dir: str | Path, *, adapter: str | Path | None = None, merge_adapter: bool = False,
                dtype: str = "auto", kernels: str = "auto", max_batch: int = 16, max_model_len: int = 0,
                constrain_data: str | Path | None = None, item_index: str = "title", decode_chunk: int = 8,
                cache_len: int = 0) -> Engine:
    """Loads an HF Llama folder (``models.hf_loading.load_llama``) and its tokenizer, optionally with a LoRA
    adapter checkpoint (``models.adapter_io`` format: what SFT and RL write as ``adapter/``, ``best_adapter/``):
    applied on top of the frozen backbone (the default; the adapter is part of the decode program's key), or
    folded into the weights at load with ``merge_adapter`` (no LoRA products while decoding; rounded to the
    parameter dtype). ``dtype``: "auto" (the checkpoint's ``torch_dtype``, float32 unless it says bfloat16),
    "float32" or "bfloat16", for both the weights and the computation. ``constrain_data``: a raw dataset folder
    whose ``item_index`` strings become the catalogue of constrained requests (``reclm_constraint``).
    ``decode_chunk`` / ``cache_len``: the SlotDecoders' steps per chunk and cache slots (0: ``default_cache_len``)."""
    from reclm_jax.models.adapter_io import ADAPTER_JSON, load_adapter
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.lora import merge_lora
    from reclm_jax.models.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: not an HF model folder (no config.json)")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise UserError(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if adapter is not None and not (Path(adapter) / ADAPTER_JSON).is_file():
        inside = [d for d in ("best_adapter", "adapter") if (Path(adapter) / d / ADAPTER_JSON).is_file()]
        hint = f"; this looks like a run folder: use --adapter {Path(adapter) / inside[0]}" if inside else ""
        raise UserError(f"--adapter {adapter}: not an adapter checkpoint (no {ADAPTER_JSON}){hint}")
    tok = load_tokenizer(model_dir, key="--model")
    dt = _checkpoint_dtype(str(model_dir)) if dtype == "auto" else dtype
    model = load_llama(model_dir, param_dtype=dt, dtype=dt, kernels=kernels)
    name = None
    if adapter is not None:
        name = load_adapter(adapter, model)
        if merge_adapter:
            merge_lora(model, name)
            name = None
    catalogue = None
    if constrain_data is not None:
        from reclm_jax.decoding import ConstrainedCatalogue

        catalogue = ConstrainedCatalogue.from_folder(constrain_data, item_index, tok, progress=True)
    return Engine(model, tok, model_dir, adapter=name, max_batch=max_batch, max_model_len=max_model_len,
                  catalogue=catalogue, decode_chunk=decode_chunk, cache_len=cache_len)
