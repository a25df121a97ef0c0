"""SlotDecoder: continuous batching gives each row what the Sampler gives its prompt alone, whatever slot it lands
in, whoever its neighbours are and whenever it joins; compaction, refusals and a bounded number of programs."""

import numpy as np
import pytest

from reclm_jax.errors import UserError
from reclm_jax.models.generation import SamplingConfig
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.slot_decoder import SlotDecoder, SlotRequest

PAD = 3


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request, tiny_llama_factory):
    return load_llama(tiny_llama_factory("llama3"), param_dtype=request.param, dtype=request.param, progress=False)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(4, 500, n).tolist() for n in (3, 11, 6, 20, 9, 14, 5)]


def alone(sampler, prompt, limit, seed=None, sampling=SamplingConfig(), stop_ids=()):
    res = sampler([prompt], max_new_tokens=limit, sampling=sampling, seeds=[seed or 0], stop_ids=[list(stop_ids)])
    return res.token_lists()[0], res.logprobs[0, :res.lengths[0]], bool(res.stopped[0])


def drive(dec, requests, arrivals, waiting_hint=True):
    """Feeds ``requests`` (SlotRequests) as they 'arrive' (request i before chunk arrivals[i]), stepping until
    all are done -> {tag: FinishedRow}."""
    pending, done, chunk = [], {}, 0
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    while len(done) < len(requests):
        while order and arrivals[order[0]] <= chunk:
            pending.append(requests[order.pop(0)])
        taken = dec.admit(pending)
        pending = pending[taken:]
        for row in dec.step(waiting=waiting_hint and bool(pending)):
            done[row.tag] = row
        chunk += 1
        assert chunk < 500
    return done


def check(dec, model, got, requests, sampling=SamplingConfig()):
    ref = Sampler(model, pad_id=PAD)
    bf16 = model.config.dtype == "bfloat16"
    for r in requests:
        tokens, logprobs, stopped = alone(ref, list(r.prompt), r.limit, r.seed, sampling, r.stop_ids)
        row = got[r.tag]
        if bf16:  # bf16 sums over other slot numbers may round a near tie the other way: compare the prefix
            n = next((i for i, (a, b) in enumerate(zip(row.tokens, tokens)) if a != b), len(tokens))
            assert n >= min(4, len(tokens)), (r.tag, row.tokens, tokens)
            np.testing.assert_allclose(row.logprobs[:n], logprobs[:n], atol=0.1)
            continue
        assert row.tokens == tokens, r.tag
        assert row.stopped == stopped
        np.testing.assert_allclose(row.logprobs, logprobs, atol=2e-5)


def test_greedy_rows_joining_mid_decode_match_the_sampler_alone(model, prompts):
    dec = SlotDecoder(model, pad_id=PAD, slots=4, cache_len=256, chunk=4)
    limits = [9, 30, 5, 17, 12, 1, 22]
    reqs = [SlotRequest(p, limit, tag=i) for i, (p, limit) in enumerate(zip(prompts, limits))]
    got = drive(dec, reqs, arrivals=[0, 0, 1, 2, 2, 3, 5])  # 7 rows through 4 slots, joining while others decode
    check(dec, model, got, reqs)
    assert dec.slot_steps / dec.steps > 2  # the slots stayed busy
    # stop ids ending rows early, per row
    free = {r.tag: got[r.tag].tokens for r in reqs}
    stops = [[free[0][2]], [], [free[2][1], 999], [], [free[4][0]]]
    reqs = [SlotRequest(prompts[i], limits[i], stop_ids=stops[i], tag=i) for i in range(5)]
    got = drive(dec, reqs, arrivals=[0, 1, 1, 0, 2])
    check(dec, model, got, reqs)
    assert got[0].stopped and got[2].stopped and got[4].stopped and got[4].tokens == free[4][:1]
    assert not got[1].stopped and len(got[1].tokens) == limits[1]
    assert dec.live == 0


def test_sampled_rows_draw_as_the_sampler_whatever_slot_or_neighbours(model, prompts):
    cfg = SamplingConfig(temperature=1.0, top_k=50)
    dec = SlotDecoder(model, pad_id=PAD, slots=4, cache_len=256, chunk=3, sampling=cfg)
    reqs = [SlotRequest(p, 12, seed=100 + i, tag=i) for i, p in enumerate(prompts)]
    got = drive(dec, reqs, arrivals=[0, 1, 0, 2, 3, 3, 4])
    check(dec, model, got, reqs, cfg)
    # the same seeds in another order and slot: the same tokens
    again = drive(dec, reqs[::-1], arrivals=[0, 0, 0, 0, 1, 2, 2])
    for r in reqs:
        assert again[r.tag].tokens == got[r.tag].tokens


def test_compaction_keeps_rows_exact_and_a_too_long_row_is_refused(model, prompts):
    if model.config.dtype != "float32":
        pytest.skip("exactness across compaction: fp32")
    dec = SlotDecoder(model, pad_id=PAD, slots=2, cache_len=80, chunk=4)
    reqs = [SlotRequest(prompts[i % len(prompts)], 20 + 7 * (i % 3), tag=i) for i in range(8)]
    got = drive(dec, reqs, arrivals=[0, 0, 1, 2, 3, 5, 6, 8])
    check(dec, model, got, reqs)
    assert dec.compactions > 0 and dec.end <= 80
    assert dec.fits(20, 48) and not dec.fits(20, 50)  # bucket(20) = 32: 32 + 50 - 1 > 80
    with pytest.raises(UserError, match="do not fit 80 cache slots"):
        dec.admit([SlotRequest(prompts[3], 50)])


def test_cancelled_rows_free_their_slots_and_leave_the_others_exact(model, prompts):
    if model.config.dtype != "float32":
        pytest.skip("exactness: fp32")
    dec = SlotDecoder(model, pad_id=PAD, slots=2, cache_len=256, chunk=4)
    keep, gone = SlotRequest(prompts[1], 30, tag="keep"), SlotRequest(prompts[3], 60, tag="gone")
    assert dec.admit([gone, keep]) == 2
    assert dec.step() == []
    assert dec.cancel(lambda tag: tag == "gone") == 1
    assert dec.live == 1 and dec.free == 1
    # A row waiting for the freed slot joins at once; neither it nor the kept row sees the cancelled one.
    late = SlotRequest(prompts[2], 12, tag="late")
    assert dec.admit([late]) == 1
    got = {}
    while dec.live:
        got.update((r.tag, r) for r in dec.step())
    assert sorted(got) == ["keep", "late"]
    check(dec, model, got, [keep, late])
    # The only live row (slot 0, decoded apart) cancelled: the decoder is empty, and the next row is exact.
    assert dec.admit([gone]) == 1
    dec.step()
    assert dec.solo_copies > 0 and dec.cancel(lambda tag: tag == "gone") == 1 and dec.live == 0
    assert dec.step() == [] and dec.cancel(lambda tag: True) == 0
    assert dec.admit([keep]) == 1
    got = {}
    while dec.live:
        got.update((r.tag, r) for r in dec.step())
    check(dec, model, got, [keep])


def test_many_admissions_compile_a_bounded_number_of_programs(model, prompts):
    if model.config.dtype != "float32":
        pytest.skip("one dtype is enough")
    dec = SlotDecoder(model, pad_id=PAD, slots=4, cache_len=128, chunk=4)
    rng = np.random.default_rng(0)

    def wave(seed):
        r = np.random.default_rng(seed)
        reqs = [SlotRequest(prompts[int(r.integers(len(prompts)))], int(r.integers(1, 24)), tag=i) for i in range(12)]
        drive(dec, reqs, arrivals=sorted(r.integers(0, 6, len(reqs)).tolist()))

    wave(1)
    wave(2)
    warm = dec.traces
    # admissions: rows buckets (1, 2, 4) x prompt buckets (16, 32); chunks of 1 or all 4 rows; a few windows
    assert warm <= 3 * 2 + 2 + 4
    for seed in range(3, 6):
        wave(seed)
    assert dec.traces <= warm + 2  # later waves meet at most a leftover window or bucket
    del rng


@pytest.mark.parametrize("kw", [dict(scan_layers=True), dict(kernels="xla")], ids=["scan-layers", "xla-kernels"])
def test_a_layer_stack_and_the_xla_kernels_decode_the_same(tiny_llama_factory, prompts, kw):
    model = load_llama(tiny_llama_factory("llama3"), progress=False, **kw)
    dec = SlotDecoder(model, pad_id=PAD, slots=2, cache_len=64, chunk=3)
    reqs = [SlotRequest(prompts[i], 6 + 5 * i, tag=i) for i in range(4)]
    got = drive(dec, reqs, arrivals=[0, 1, 1, 2])
    check(dec, model, got, reqs)


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scan-layers"])
def test_light_load_decodes_a_smaller_batch_with_the_same_answers(tiny_llama_factory, prompts, scan):
    model = load_llama(tiny_llama_factory("llama3"), progress=False, scan_layers=scan)
    dec = SlotDecoder(model, pad_id=PAD, slots=8, cache_len=128, chunk=4)
    reqs = [SlotRequest(prompts[i], 10 + i, tag=i) for i in range(6)]
    got = drive(dec, reqs[:1], arrivals=[0])  # one row: chunks of the 1-row bucket
    assert [k for k in dec._programs if k[0] == "chunk"] == [("chunk", 1)]
    # 10 tokens in chunks of 4: the row's state left the shared one once, not once per chunk
    assert dec.chunks == 3 and dec.solo_copies == 1
    assert ("solo_in",) in dec._programs  # compiled with the first solo chunk, before any row joins
    traced = dec.traces
    # the decoder is empty: its solo state is dropped, not copied back (admission rewrites slot 0 whole)
    got.update(drive(dec, reqs[1:2], arrivals=[0]))
    assert dec.solo_copies == 2 and dec.traces == traced
    # rows joining while slot 0 decodes alone: its state goes back into the shared one, all 8 slots decode
    got.update(drive(dec, reqs[2:], arrivals=[0, 1, 1, 1]))
    assert ("chunk", 8) in dec._programs
    assert dec.solo_copies == 4  # out, back in when the second row joined
    check(dec, model, got, reqs)
