"""Sampler: one compile per bucket, per-row seeds, weight updates without recompiling, per-row processor data."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.generation import LogitsProcessor, SamplingConfig, generate
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, add_lora
from reclm_jax.models.sampler import Sampler


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(4, 500, n).tolist() for n in (3, 11, 6)]


def test_lengths_within_a_bucket_compile_once_and_match_full_recomputation(model, prompts):
    sampler = Sampler(model, pad_id=3)
    runs = {n: sampler(prompts, max_new_tokens=n) for n in (3, 7, 12, 16)}  # all in the 16 bucket
    assert sampler.traces == 1
    full = runs[16]
    for n, res in runs.items():
        assert res.tokens.shape == (3, n) and (res.lengths == n).all() and not res.stopped.any()
        np.testing.assert_array_equal(res.tokens, full.tokens[:, :n])
    mixed = sampler(prompts, max_new_tokens=[2, 9, 5])  # per-row limits, same program
    assert sampler.traces == 1 and mixed.lengths.tolist() == [2, 9, 5] and mixed.tokens.shape == (3, 9)
    for i, n in enumerate((2, 9, 5)):
        assert mixed.token_lists()[i] == full.token_lists()[i][:n]
        assert (mixed.tokens[i, n:] == 3).all() and (mixed.logprobs[i, n:] == 0).all()
    # greedy = the argmax of a full forward pass over prompt + generated tokens, with the same logprobs
    for i, p in enumerate(prompts):
        seq = np.asarray([p + full.token_lists()[i]])
        logp = np.asarray(jax.nn.log_softmax(model(seq).logits[0].astype(jnp.float32)))
        pos = np.arange(len(p) - 1, seq.shape[1] - 1)
        assert (logp[pos].argmax(-1) == seq[0, len(p):]).all()
        np.testing.assert_allclose(full.logprobs[i], logp[pos, seq[0, len(p):]], atol=1e-5)
    # the generate() wrapper gives the same tokens
    assert generate(model, prompts, max_new_tokens=12, pad_id=3).token_lists() == runs[12].token_lists()
    sampler(prompts, max_new_tokens=17)  # the next bucket is a new program
    assert sampler.traces == 2


def test_per_row_seeds_reproduce_a_row_regardless_of_neighbours_and_position(model, prompts):
    sampler = Sampler(model, pad_id=3)
    cfg = SamplingConfig(temperature=1.0)
    base = sampler(prompts, max_new_tokens=10, sampling=cfg, seeds=[11, 22, 33]).token_lists()
    moved = sampler([prompts[2], prompts[0]], max_new_tokens=10, sampling=cfg, seeds=[33, 11]).token_lists()
    assert moved == [base[2], base[0]]
    rng = np.random.default_rng(1)
    crowd = [rng.integers(4, 500, 9).tolist() for _ in range(4)] + [prompts[1]]  # new neighbours, row 4 of 8
    got = sampler(crowd, max_new_tokens=10, sampling=cfg, seeds=[1, 2, 3, 4, 22]).token_lists()
    assert got[4] == base[1]
    other = sampler(prompts, max_new_tokens=10, sampling=cfg, seeds=[12, 22, 34]).token_lists()
    assert other[1] == base[1] and other[0] != base[0] and other[2] != base[2]
    # an int seed gives each row its own stream: identical prompts still draw differently
    same = sampler([prompts[0]] * 2, max_new_tokens=10, sampling=cfg, seeds=7).token_lists()
    assert same[0] != same[1]
    assert sampler.traces == 3  # batch buckets 2, 4 and 8; seeds and row moves are data


def test_update_params_changes_output_without_recompiling(tiny_llama_factory, prompts):
    model = load_llama(tiny_llama_factory("llama3"), progress=False)
    add_lora(model, LoraConfig(rank=4, targets=("q_proj", "v_proj", "down_proj")), "actor")
    sampler = Sampler(model, pad_id=3)
    before = sampler(prompts, max_new_tokens=8, adapter="actor")
    plain = generate(model, prompts, max_new_tokens=8, pad_id=3)
    assert before.token_lists() == plain.token_lists()  # B starts at zero
    keys = iter(jax.random.split(jax.random.key(0), 64))
    new = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(next(keys), x.shape, x.dtype), sampler.trainable)
    sampler.update_params(new)
    after = sampler(prompts, max_new_tokens=8, adapter="actor")
    assert sampler.traces == 1 and after.token_lists() != before.token_lists()
    nnx.update(model, new)  # the same weights merged into the module give the same tokens
    assert generate(model, prompts, max_new_tokens=8, pad_id=3, adapter="actor").token_lists() == \
        after.token_lists()
    with pytest.raises(UserError, match="changed from"):
        sampler.update_params(jax.tree.map(lambda x: x[..., :1], new))


class BanPerRow(LogitsProcessor):
    """Row i may never emit data["banned"][i]; data["boost"] (shared) is added to one token everywhere."""

    row_fields = ("banned",)

    def process(self, state, logits, step, data):
        vocab = jnp.arange(logits.shape[-1])
        logits = logits + jnp.where(vocab == data["boost"][0], data["boost"][1], 0.0)
        return jnp.where(vocab[None] == data["banned"][:, None], -jnp.inf, logits)


def test_processor_row_data_bans_a_different_token_per_row(model, prompts):
    sampler = Sampler(model, pad_id=3)
    free = sampler(prompts, max_new_tokens=6)
    banned = free.tokens[:, 0]
    assert len(set(banned.tolist())) == 3
    proc = BanPerRow()
    data = {"banned": banned, "boost": jnp.asarray([0, 0], jnp.float32)}
    res = sampler(prompts, max_new_tokens=6, logits_processor=proc, processor_data=data)
    for i, p in enumerate(prompts):
        assert banned[i] not in res.tokens[i]
        alone = sampler([p], max_new_tokens=6, logits_processor=proc,
                        processor_data={"banned": banned[i:i + 1], "boost": data["boost"]})
        assert alone.token_lists()[0] == res.token_lists()[i]
    # each row is constrained by its own entry only: banning row 0's token leaves rows 1, 2 as when free
    only0 = sampler(prompts, max_new_tokens=6, logits_processor=proc,
                    processor_data={"banned": np.array([banned[0], -1, -1]), "boost": data["boost"]})
    assert only0.token_lists()[1:] == free.token_lists()[1:] and only0.tokens[0, 0] != banned[0]
    traces = sampler.traces
    boosted = sampler(prompts, max_new_tokens=6, logits_processor=proc,
                      processor_data={"banned": np.array([-1, -1, -1]), "boost": jnp.asarray([42, 1e4])})
    assert (boosted.tokens == 42).all() and sampler.traces == traces  # new values, same program
    with pytest.raises(UserError, match="leading dim of 3"):
        sampler(prompts, max_new_tokens=6, logits_processor=proc, processor_data={**data, "banned": banned[:2]})


def test_per_row_stop_ids(model, prompts):
    sampler = Sampler(model, pad_id=3)
    free = sampler(prompts, max_new_tokens=8)
    stops = [[int(free.tokens[0, 2])], [], [int(free.tokens[2, 4]), 999]]
    res = sampler(prompts, max_new_tokens=8, stop_ids=stops)
    assert res.lengths.tolist() == [free.token_lists()[0].index(stops[0][0]) + 1, 8,
                                    free.token_lists()[2].index(stops[2][0]) + 1]
    assert res.stopped.tolist() == [True, False, True]
    with pytest.raises(UserError, match="one list per prompt"):
        sampler(prompts, max_new_tokens=8, stop_ids=[[1], [2]])


class FakeProcess:
    """Process ``index`` of ``count`` that all hold the same rows, simulated on one device.

    ``place`` tiles this process's rows into the global batch (every process supplies the same rows),
    ``batch_sharding`` says which global rows are this process's (block ``index``), ``agree_max`` folds in the
    other processes' values ``others`` and records what this process asked. It has no ``to_host``: the Sampler
    reads a process's rows from its own shards and gathers nothing."""

    mesh = None

    def __init__(self, index: int, count: int = 2, others=None):
        self.process_index, self.process_count, self.others = index, count, others
        self.agreed, self.placed = [], []

    def agree_max(self, values):
        self.agreed.append([int(v) for v in values])
        return [max(int(v), o) for v, o in zip(values, self.others or [0] * len(values))]

    def batch_sharding(self, ndim, global_rows, batch_dim=0):
        return _BlockSharding(self.process_index, global_rows // self.process_count)

    def place(self, local, batch_dim=0):
        whole = np.concatenate([np.asarray(local)] * self.process_count, axis=batch_dim)
        self.placed.append(whole.shape)
        return jnp.asarray(whole)

    def place_tree(self, tree, batch_dim=0):
        return jax.tree.map(lambda x: self.place(x, batch_dim), tree)

    def replicate(self, tree):
        return tree

    def activate(self):
        return contextlib.nullcontext()


class _BlockSharding:
    def __init__(self, index, rows):
        self.index, self.rows = index, rows

    def addressable_devices_indices_map(self, shape):
        return {"this process": (slice(self.index * self.rows, (self.index + 1) * self.rows),)
                + (slice(None),) * (len(shape) - 1)}


def test_int_seed_streams_follow_the_global_row_across_processes(model, prompts):
    four = prompts + [prompts[0]]  # the batch bucket exactly: no idle rows
    kw = dict(max_new_tokens=10, sampling=SamplingConfig(temperature=1.0), seeds=7)
    per_process = [Sampler(model, pad_id=3, runtime=FakeProcess(i, others=[0, 0, 0]))(four, **kw).token_lists()
                   for i in (0, 1)]
    assert per_process[0][0] != per_process[1][0]  # row 0 of each process draws from its own stream
    # an int seed's stream is the global row index: the processes' rows sample as one global batch would
    assert per_process[0] + per_process[1] == Sampler(model, pad_id=3)(four * 2, **kw).token_lists()


def test_processes_agree_on_buckets_and_return_their_own_rows(model, prompts):
    rt = FakeProcess(1, others=[9, 40, 30])  # the other process has 9 rows, a 40-token prompt, 30 new tokens
    sampler = Sampler(model, pad_id=3, runtime=rt)
    res = sampler(prompts, max_new_tokens=[2, 5, 4])
    assert rt.agreed == [[3, 11, 5]]
    assert rt.placed[0] == (2 * 16, 64)  # tokens: 2 processes x bucket(9) rows, bucket(40) prompt positions
    assert [key[-1] for key in sampler._programs] == [32]  # the output length bucket of 30
    assert res.tokens.shape == (3, 5) and res.lengths.tolist() == [2, 5, 4]
    ref = Sampler(model, pad_id=3, prompt_buckets=(64,), length_buckets=(32,))(prompts, max_new_tokens=[2, 5, 4],
                                                                               rows=32)
    assert res.token_lists() == ref.token_lists()
    rows = FakeProcess(0, others=[6, 0, 0])  # rows= is agreed too: the largest any process asked for
    Sampler(model, pad_id=3, runtime=rows)(prompts, max_new_tokens=2, rows=4)
    assert rows.agreed == [[4, 11, 2]] and rows.placed[0] == (2 * 6, 16)
    with pytest.raises(UserError, match="agree_max"):
        no_agree = FakeProcess(0)
        no_agree.agree_max = None
        Sampler(model, pad_id=3, runtime=no_agree)(prompts, max_new_tokens=2)


def test_jax_keys_are_one_seed_and_other_arrays_must_be_one_int_per_prompt(model, prompts):
    two = prompts[:2]
    kw = dict(max_new_tokens=8, pad_id=3, sampling=SamplingConfig(temperature=1.0))
    raw = jax.random.PRNGKey(5)  # uint32[2]: one key, not two seeds
    typed = jax.random.wrap_key_data(raw)
    want = generate(model, two, seed=int(jax.random.bits(typed, dtype=jnp.uint32)), **kw).token_lists()
    assert generate(model, two, seed=raw, **kw).token_lists() == want
    assert generate(model, two, seed=typed, **kw).token_lists() == want
    assert Sampler(model, pad_id=3)(two, max_new_tokens=8, sampling=kw["sampling"], seeds=raw).token_lists() == want
    per_row = generate(model, two, seed=np.asarray([0, 5], np.uint32), **kw).token_lists()  # numpy: per-row seeds
    assert per_row == generate(model, two, seed=[0, 5], **kw).token_lists() != want
    for bad in (np.asarray([0.5, 1.5]), jnp.zeros(2, jnp.float32), jax.random.split(typed, 2), [1, 2, 3], "x", 1.5):
        with pytest.raises(UserError, match="seed"):
            generate(model, two, seed=bad, **kw)


def test_sampler_has_no_set_model():
    assert not hasattr(Sampler, "set_model")  # replaced by update_params / a new Sampler


def test_top_logprobs_are_the_k_most_likely_tokens_of_every_step(model, prompts):
    sampler = Sampler(model, pad_id=3)
    plain = sampler(prompts, max_new_tokens=[6, 9, 4])
    res = sampler(prompts, max_new_tokens=[6, 9, 4], top_logprobs=5)
    assert plain.top_ids is None and res.top_ids.shape == res.top_logprobs.shape == (3, 9, 5)
    assert res.token_lists() == plain.token_lists()  # the same tokens: alternatives are only read
    for i, p in enumerate(prompts):
        n = int(res.lengths[i])
        seq = np.asarray([p + res.token_lists()[i]])
        logp = np.asarray(jax.nn.log_softmax(model(seq).logits[0].astype(jnp.float32)))[len(p) - 1:len(p) - 1 + n]
        want = np.argsort(-logp, axis=-1, kind="stable")[:, :5]
        np.testing.assert_array_equal(res.top_ids[i, :n], want)
        np.testing.assert_allclose(res.top_logprobs[i, :n], np.take_along_axis(logp, want, -1), atol=1e-5)
        assert (res.top_ids[i, :n, 0] == res.tokens[i, :n]).all()  # greedy: the chosen token is the most likely
        assert (res.top_ids[i, n:] == 3).all() and (res.top_logprobs[i, n:] == 0).all()
    with pytest.raises(UserError, match="top_logprobs"):
        sampler(prompts, max_new_tokens=2, top_logprobs=-1)
