"""The vLLM plugin's batch bookkeeping (``RequestRows``) driven as vLLM V1 drives a logits processor, with fake
``BatchUpdate``s (requests added into slots, removed, moved one way and swapped): every constrained slot gets
exactly its own request's allowed tokens (``HostRow``, itself checked against ``CatalogueProcessor`` in
``test_host_state.py``) however the batch is reshuffled, unconstrained slots keep their logits, async-scheduling
placeholders are waited for, each request's list ends within its ``max_tokens``, and the extra argument's
forms (object, JSON string, true / 1) are read."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reclm_jax.decoding.host_state import HostRow, HostTables
from reclm_jax.decoding.spec import SpecError
from reclm_jax.decoding.vllm_batch import RequestRows, request_constraint
from reclm_jax.testing.tiny_catalogue import random_constraints


class Move(enum.Enum):  # vLLM's MoveDirectionality, by name
    UNIDIRECTIONAL = 1
    SWAP = 2


@dataclasses.dataclass(frozen=True)
class Update:  # vLLM's BatchUpdate
    batch_size: int
    removed: list
    added: list
    moved: list


@dataclasses.dataclass
class Params:  # the part of SamplingParams the plugin reads
    extra_args: dict | None
    max_tokens: int | None = None


def _spec(c, form: int):
    """A ListConstraint as a request would send it (object, or JSON string as vllm_xargs carries it)."""
    if c is None:
        return None
    spec = {"k_min": c.k_min, "k_max": c.k_max, "category": c.category, "category_mode": c.category_mode,
            "c_min": c.c_min, "c_max": c.c_max, "exclude": list(c.exclude),
            "candidates": None if c.candidates is None else list(c.candidates)}
    return {"reclm_constraint": json.dumps(spec) if form else spec}


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_slots_follow_their_requests_through_batch_changes(kind, make_catalogue, load_tok):
    vocab = len(load_tok(kind))
    cat, items, titles, i2c, cats = make_catalogue(kind, n=60, seed=2)
    rng = np.random.default_rng(0)
    cons = random_constraints(rng, items, cats, 24)
    tables = HostTables(cat)
    rows = RequestRows(cat)
    queue = list(range(len(cons)))
    slots: list[int | None] = [None] * 6  # slot -> request
    out = {r: [] for r in queue}
    limits = [None if r % 3 == 0 else int(rng.integers(3, 60)) for r in range(len(cons))]  # max_tokens or none
    ref = {r: None if c is None else HostRow(tables, cat.row_data([c], [limits[r]])["rows"])
           for r, c in enumerate(cons)}
    finished, checked = 0, 0
    for step in range(400):
        removed, added, moved = [], [], []
        for s, r in enumerate(slots):  # finished requests leave
            if r is not None and (cat.format.end_id in out[r][-1:] or len(out[r]) >= (limits[r] or 150)):
                slots[s], finished = None, finished + 1
                removed.append(s)
        for s in range(len(slots)):  # new requests fill free slots
            if slots[s] is None and queue and rng.random() < 0.7:
                r = queue.pop(0)
                slots[s] = r
                added.append((s, Params(_spec(cons[r], r % 2), limits[r]), [1, 2, 3], out[r]))
        if rng.random() < 0.3:  # a swap, or a one-way move into a free slot (vLLM condensing its batch)
            a, b = (int(x) for x in rng.choice(len(slots), 2, replace=False))
            if slots[b] is None:
                moved.append((a, b, Move.UNIDIRECTIONAL))
                slots[b], slots[a] = slots[a], None
            else:
                moved.append((a, b, Move.SWAP))
                slots[a], slots[b] = slots[b], slots[a]
        if removed or added or moved:
            rows.update(Update(len(slots), removed, added, moved))
        else:
            rows.update(None)
        logits = torch.randn(len(slots), vocab + 7)  # vLLM's logits may be wider than the tokenizer
        before = logits.clone()
        rows.apply(logits)
        for s, r in enumerate(slots):
            if r is None:
                continue
            if ref[r] is None:
                assert torch.equal(logits[s], before[s])
                tok = int(torch.argmax(logits[s]))
            else:
                np.testing.assert_array_equal(np.flatnonzero(torch.isfinite(logits[s]).numpy()), ref[r].allowed())
                tok = int(torch.argmax(logits[s]))
                ref[r].advance(tok)
                checked += 1
                assert limits[r] is None or len(out[r]) + 1 < limits[r] or tok == cat.format.end_id, \
                    f"request {r}: its list did not end within max_tokens {limits[r]}"
            out[r].append(tok)
    assert finished >= 15 and checked > 200


def test_async_placeholders_wait_for_the_real_token(make_catalogue):
    cat, items, *_ = make_catalogue("bpe", n=60, seed=2)
    rows = RequestRows(cat)
    out: list[int] = []
    rows.update(Update(1, [], [(0, Params({"reclm_constraint": True}), None, out)], []))
    first = rows.allowed()[0]
    out.append(int(first[0]))
    out.append(-1)  # the next token is still on its way: the state stops before it
    again = rows.allowed()[0]
    ref = HostRow(HostTables(cat), cat.row_data([request_constraint({"reclm_constraint": True})])["rows"])
    ref.advance(int(first[0]))
    np.testing.assert_array_equal(again, ref.allowed())


def test_extra_arg_forms(make_catalogue):
    assert request_constraint(None) is None and request_constraint({"other": 1}) is None
    for v in (True, 1, "true"):
        assert request_constraint({"reclm_constraint": v}).k_max is None
    assert request_constraint({"reclm_constraint": 0}) is None
    c = request_constraint({"reclm_constraint": json.dumps({"task": "SFTTestSeqRec", "input_field_data": {
        "item_count": 3, "sub_sequential": ["a", "b"]}})})
    assert (c.k_min, c.k_max, c.exclude) == (3, 3, ("a", "b"))
    for bad, words in (("{", "not JSON"), ('{"colour": 1}', "unknown fields"), ('{"item_count": -1}', "item_count"),
                       ("[1]", "true, an object")):
        with pytest.raises(SpecError, match=words):
            request_constraint({"reclm_constraint": bad})


def test_the_plugins_host_side_needs_no_jax(tiny_tokenizer_dir, tiny_dataset_dir):
    """vLLM's venv has no JAX: everything the plugin imports besides vLLM loads and builds the catalogue with
    ``import jax`` and ``import flax`` failing."""
    code = f"""
import ast, pathlib, sys
sys.modules["jax"] = sys.modules["flax"] = None  # any import of them now raises ImportError
from reclm_jax.decoding import vllm_batch
cat = vllm_batch.load_catalogue({str(tiny_tokenizer_dir)!r}, {str(tiny_dataset_dir)!r})
rows = vllm_batch.RequestRows(cat)
assert len(cat) > 0 and rows.new_row(vllm_batch.request_constraint({{"reclm_constraint": True}})).allowed().size == 1
tree = ast.parse(pathlib.Path(vllm_batch.__file__).with_name("vllm_plugin.py").read_text())
mods = {{n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}}
mods |= {{a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}}
for m in mods:
    if m.startswith("reclm_jax"):
        __import__(m)
print("ok", sorted(mods))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
