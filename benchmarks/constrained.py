"""Constrained decoding's cost: decode tokens/s with and without the catalogue constraint, and a 1M-title trie.

    python benchmarks/constrained.py [--model DIR] [--data_path DIR] [--item_index title] [--batch 16]
        [--k 10] [--new-tokens 128] [--repeats 3] [--rounds 2] [--catalogue-size 1000000] [--scale-steps 64]
        [--json FILE] [--smoke]

Defaults: the converted SmolLM2-135M-Instruct (``reclm_jax.models.fetch.ensure_smollm2``) and MovieLens-1M at
``~/.cache/reclm_jax/datasets/ml-1m``. ``--smoke``: a tiny random model and the tiny synthetic dataset, batch 4,
lists of 3, 160 new tokens, one round, a 2,000-title synthetic catalogue (seconds; the test suite runs it).

Decode: each configuration in its own worker process (this script with ``--worker plain|constrained``),
alternating over ``--rounds`` (the machine may be shared). Both decode the same ``--batch`` prompts (SeqRec-like
chat prompts listing a random ML-1M history) greedily in bf16 for exactly ``--new-tokens`` tokens (no stop ids, so
the constrained rows keep paying for the processor after their list ends, and both sides run the same number of
steps); ``constrained`` adds the ``CatalogueProcessor`` with a mix of every rule (exactly ``--k`` items, no history,
``+C``, ``-C``, at most / at least / about c of C). tokens/s = batch x new tokens / wall time of one call, best
of ``--repeats`` after a first (compiling) call; the slowdown is 1 - constrained / plain (target <= 10%). The
constrained worker also reports the catalogue build time and checks every row's list with
``decoding.check.violations``.

Scale (worker ``scale``): a synthetic catalogue of ``--catalogue-size`` titles of 2-5 words drawn from the
tokenizer's own alphabetic tokens plus a year, built with the model's tokenizer: build seconds (tokenize + trie),
trie nodes, shared device bytes, per-row state bytes at the batch size, and the per-step cost of the processor
(process + update at [batch, vocab] random logits, ``--scale-steps`` steps in a jitted scan, minus the same scan
without it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import run_one  # noqa: E402  (numpy and the stdlib only)

RULES = ("exact", "+C", "-C", "LP", "MP", "EP")


def _constraints(samples, cats, rng, k: int):
    from reclm_jax.decoding import ListConstraint

    out = []
    for j, (hist, _) in enumerate(samples):
        rule, cat = RULES[j % len(RULES)], str(rng.choice(cats))
        base = dict(k_min=k, k_max=k, exclude=tuple(hist))
        out.append({"exact": ListConstraint(**base),
                    "+C": ListConstraint(**base, category=cat, category_mode="only"),
                    "-C": ListConstraint(**base, category=cat, category_mode="exclude"),
                    "LP": ListConstraint(**base, category=cat, c_max=2),
                    "MP": ListConstraint(**base, category=cat, c_min=3),
                    "EP": ListConstraint(**base, category=cat, c_min=2, c_max=4)}[rule])
    return out


def _prompts(tok, raw, index, batch: int, seed: int = 0):
    """``batch`` chat prompts listing a random 10-item history each -> (token lists, [(history, prompt)])."""
    rng = np.random.default_rng(seed)
    users = list(raw.sequential)
    samples = []
    for u in rng.choice(len(users), size=batch, replace=False):
        hist = raw.sequential[users[int(u)]][-10:]
        text = ("Here is the user's historical interactions: " + ", ".join(index.text[i] for i in hist) +
                ". Please recommend 10 items that the user is most likely to interact with next.")
        samples.append((hist, tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                       add_generation_prompt=True)))
    return [tok(p, add_special_tokens=False)["input_ids"] for _, p in samples], samples


def decode_worker(args) -> dict:
    import jax

    from reclm_jax.data.item_index import load_dataset
    from reclm_jax.decoding import ConstrainedCatalogue
    from reclm_jax.decoding.check import violations
    from reclm_jax.eval.parsing import parse_list
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.sampler import Sampler
    from reclm_jax.models.tokenizer import load_tokenizer, pad_token_id

    tok = load_tokenizer(args.model)
    raw, index = load_dataset(args.data_path, args.item_index, tokenizer=tok)
    prompts, samples = _prompts(tok, raw, index, args.batch)
    model = load_llama(args.model, param_dtype="bfloat16", dtype="bfloat16")
    sampler = Sampler(model, pad_id=pad_token_id(tok))
    out = {"worker": args.worker, "round": args.round, "jax": jax.__version__}
    kw = {}
    if args.worker == "constrained":
        t0 = time.perf_counter()
        cat = ConstrainedCatalogue.from_dataset(raw, index, tok, tok.eos_token, max_items=32)
        out.update(build_s=time.perf_counter() - t0, items=len(cat), nodes=cat.trie.num_nodes,
                   device_bytes=cat.device_bytes())
        cons = _constraints(samples, cat.categories, np.random.default_rng(1), args.k)
        kw = dict(logits_processor=cat.processor, processor_data=cat.processor_data(cons))
    t0 = time.perf_counter()
    res = sampler(prompts, max_new_tokens=args.new_tokens, stop_ids=[], **kw)
    out["first_call_s"] = time.perf_counter() - t0
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = sampler(prompts, max_new_tokens=args.new_tokens, stop_ids=[], **kw)
        walls.append(time.perf_counter() - t0)
    out.update(wall_s=min(walls), tokens_per_s=args.batch * args.new_tokens / min(walls))
    if kw:
        bad = unfinished = 0
        for row, c in zip(res.tokens.tolist(), cons):
            if cat.processor.end_id not in row:  # the list did not end within new-tokens: not checked
                unfinished += 1
                continue
            titles = parse_list(tok.decode(row[:row.index(cat.processor.end_id)], skip_special_tokens=True))
            bad += bool(violations(titles, c, cat, raw.item2category))
        out.update(rows_violating=bad, rows_unfinished=unfinished)
    return out


def synthetic_titles(tok, n: int, seed: int = 0) -> list[str]:
    """n distinct titles of 2-5 words taken from the tokenizer's alphabetic tokens, plus a year."""
    words = sorted({w.strip() for w in (tok.decode([i]) for i in range(len(tok))) if w.strip().isalpha()
                    and len(w.strip()) >= 3})
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        m = n - len(out)
        counts = rng.integers(2, 6, size=m)
        picks = rng.integers(0, len(words), size=(m, 5))
        years = rng.integers(1900, 2025, size=m)
        for c, row, y in zip(counts.tolist(), picks.tolist(), years.tolist()):
            out[" ".join(words[k].capitalize() for k in row[:c]) + f" ({y})"] = None
    return list(out)[:n]


def scale_worker(args) -> dict:
    import jax
    import jax.numpy as jnp

    from reclm_jax.decoding import ConstrainedCatalogue, ListConstraint
    from reclm_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(args.model)
    titles = synthetic_titles(tok, args.catalogue_size)
    items = [f"i{j}" for j in range(len(titles))]
    cats = [f"c{j}" for j in range(20)]
    i2c = {it: [cats[j % 20], cats[(j * 7 + 3) % 20]] for j, it in enumerate(items)}
    t0 = time.perf_counter()
    cat = ConstrainedCatalogue(items, titles, i2c, cats, tok, tok.eos_token, max_items=32, progress=True)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    cons = [ListConstraint(k_min=10, k_max=10, exclude=tuple(rng.choice(items, 20).tolist()),
                           category=cats[j % 20], category_mode=("only", "exclude", "none")[j % 3],
                           c_min=(j % 3 == 2) * 3) for j in range(args.batch)]
    data = jax.device_put(cat.processor_data(cons))
    vocab, proc, steps, b = len(tok), cat.processor, args.scale_steps, args.batch

    def loop(with_proc: bool):
        @jax.jit
        def run(data, key):
            state = proc.init(None, None, data)

            def body(carry, step):
                state, key = carry
                key, k1 = jax.random.split(key)
                logits = jax.random.normal(k1, (b, vocab))
                if with_proc:
                    logits = proc.process(state, logits, step, data)
                tok_ = jnp.argmax(logits, axis=-1).astype(jnp.int32)
                return (proc.update(state, tok_, data) if with_proc else state, key), tok_

            return jax.lax.scan(body, (state, key), jnp.arange(steps, dtype=jnp.int32))[1]

        run(data, jax.random.key(0)).block_until_ready()
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            run(data, jax.random.key(r + 1)).block_until_ready()
            times.append(time.perf_counter() - t0)
        return min(times) / steps

    with_p, without = loop(True), loop(False)
    row_bytes = 4 * b * (2 * cat.words + 2 * (cat.words + 1) + 5)
    return {"worker": "scale", "titles": len(titles), "items": len(cat), "title_tokens": int(
        sum(len(x) for x in tok(titles[:2000], add_special_tokens=False)["input_ids"]) * len(titles) / 2000),
        "build_s": build, "nodes": cat.trie.num_nodes, "max_children": cat.trie.max_children,
        "device_bytes": cat.device_bytes(), "row_state_bytes": row_bytes, "step_ms": 1e3 * (with_p - without),
        "step_ms_without": 1e3 * without, "vocab": vocab, "batch": b}


# -- parent ------------------------------------------------------------------------------------------------
def summarise(outputs: list[dict]) -> dict:
    """Medians over rounds per decode worker, the slowdown, and the scale worker's figures."""
    rate = {w: [o["tokens_per_s"] for o in outputs if o.get("worker") == w] for w in ("plain", "constrained")}
    med = {w: statistics.median(v) if v else None for w, v in rate.items()}
    slow = 1 - med["constrained"] / med["plain"] if med["plain"] and med["constrained"] else None
    con = [o for o in outputs if o.get("worker") == "constrained"]
    scale = next((o for o in outputs if o.get("worker") == "scale"), None)
    return {"tokens_per_s": med, "slowdown": slow, "within_target": slow is not None and slow <= 0.10,
            "build_s": con[0]["build_s"] if con else None, "rows_violating": sum(o["rows_violating"] for o in con),
            "rows_unfinished": sum(o["rows_unfinished"] for o in con),
            "scale": scale}


def table(s: dict) -> str:
    f = lambda x, fmt="{:.1f}": "–" if x is None else fmt.format(x)  # noqa: E731
    lines = ["| | tokens/s |", "|---|---|", f"| plain | {f(s['tokens_per_s']['plain'])} |",
             f"| constrained | {f(s['tokens_per_s']['constrained'])} |",
             f"| slowdown | {f(s['slowdown'], '{:.1%}')} (target <= 10%) |",
             f"| constrained rows violating | {s['rows_violating']} ({s['rows_unfinished']} unfinished, not checked) |"]
    if s["scale"]:
        sc = s["scale"]
        lines += ["", "| synthetic catalogue | |", "|---|---|", f"| titles | {sc['items']:,} |",
                  f"| build s | {sc['build_s']:.1f} |", f"| trie nodes | {sc['nodes']:,} |",
                  f"| shared device MB | {sc['device_bytes'] / 2**20:.1f} |",
                  f"| per-row state KB | {sc['row_state_bytes'] / sc['batch'] / 1024:.1f} |",
                  f"| processor ms / step (batch {sc['batch']}) | {sc['step_ms']:.2f} |"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data_path", default=str(Path.home() / ".cache" / "reclm_jax" / "datasets" / "ml-1m"))
    p.add_argument("--item_index", default="title")
    for name, full in (("batch", 16), ("k", 10), ("new-tokens", 128), ("repeats", 3), ("rounds", 2),
                       ("catalogue-size", 1_000_000), ("scale-steps", 64)):
        p.add_argument(f"--{name}", type=int, default=None, help=f"default {full}")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--smoke", action="store_true", help="tiny model and dataset, a 2,000-title catalogue")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    defaults = dict(batch=(16, 4), k=(10, 3), new_tokens=(128, 160), repeats=(3, 1), rounds=(2, 1),
                    catalogue_size=(1_000_000, 2000), scale_steps=(64, 8))
    for key, (full, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.worker:
        fn = scale_worker if args.worker == "scale" else decode_worker
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="reclm_jax_constrained_bench_"))
    if args.smoke:
        from reclm_jax.testing.tiny_data import write_tiny_dataset
        from reclm_jax.testing.tiny_model import write_tiny_llama

        args.model = str(write_tiny_llama(work / "model"))
        args.data_path = str(write_tiny_dataset(work / "data"))
    elif args.model is None:
        from reclm_jax.models.fetch import ensure_smollm2

        args.model = str(ensure_smollm2())
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    common = ["--model", args.model, "--data_path", args.data_path, "--item_index", args.item_index,
              "--batch", str(args.batch), "--k", str(args.k), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
              "--catalogue-size", str(args.catalogue_size), "--scale-steps", str(args.scale_steps)]
    outputs, failures = [], {}
    jobs = [(w, r) for r in range(1, args.rounds + 1)
            for w in (("plain", "constrained") if r % 2 else ("constrained", "plain"))] + [("scale", 1)]
    for w, r in jobs:
        result, why, tail = run_one([sys.executable, __file__, "--worker", w, "--round", str(r), *common], env)
        if result is None:
            failures[f"{w}/{r}"] = f"{why}\n{tail[-2000:]}"
            continue
        outputs.append(result)
    summary = summarise(outputs)
    print(table(summary))
    result = {"model": args.model, "data_path": args.data_path, "summary": summary, "outputs": outputs,
              "failures": failures, "smoke": args.smoke}
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if failures:
        sys.exit("error: " + "; ".join(f"{k}: {v.strip().splitlines()[-1] if v.strip() else '?'}"
                                       for k, v in failures.items()))


if __name__ == "__main__":
    main()
