"""Random catalogues for constrained-decoding tests and benchmarks, and a tiny SentencePiece tokenizer (Llama-2
style: byte fallback, ``▁`` word starts, ``</s>``) trained offline on titles of the same kind.

Titles are made of a few words and a year, with the awkward cases a trie must handle: titles that are prefixes
of others ("Heat (1995)" / "Heat (1995) II"), titles starting with a digit, punctuation and apostrophes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from reclm_jax.decoding.catalogue import ListConstraint

_WORDS = ("the", "of", "a", "story", "man", "love", "night", "day", "war", "king", "city", "heat", "alien", "star",
          "dream", "house", "river", "empire", "garden", "shadow", "summer", "signal", "journey", "witness")
_EXTRA = ("II", "2", "Part 3", ": Reloaded", "'s Return", "- The Musical", "!")
CATEGORIES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi")


def random_titles(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct titles such as "Alien Star (1979)", "12 Heat (1995)" or "Heat (1995) II"."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        words = [str(rng.choice(_WORDS)).capitalize() for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.1:
            words.insert(0, str(int(rng.integers(2, 100))))
        title = " ".join(words) + f" ({int(rng.integers(1950, 2001))})"
        out[title] = None
        if rng.random() < 0.2 and len(out) < n:
            out[f"{title} {rng.choice(_EXTRA)}"] = None  # the first title is a prefix of this one
    return list(out)


def random_catalogue(n: int, seed: int = 0, categories=CATEGORIES) -> tuple[list[str], list[str], dict, list]:
    """(item ids, titles, item -> [categories] (one or two), category names)."""
    rng = np.random.default_rng(seed + 1)
    titles = random_titles(n, seed)
    items = [f"i{j}" for j in range(n)]
    cats = list(categories)
    item2category = {}
    for it in items:
        k = 1 + int(rng.random() < 0.3)
        item2category[it] = [cats[j] for j in rng.choice(len(cats), size=k, replace=False)]
    return items, titles, item2category, cats


def random_constraints(rng: np.random.Generator, items, cats, n: int) -> list[ListConstraint | None]:
    """n constraints cycling through every rule (exact k, +C, -C, at most / at least / about c of C, candidates,
    history, at most k, none)."""
    out = []
    for j in range(n):
        kind = j % 8
        k = int(rng.integers(1, 7))
        history = tuple(rng.choice(items, size=int(rng.integers(0, 9)), replace=False).tolist())
        cat = str(rng.choice(cats))
        c = int(rng.integers(0, k + 1))
        if kind == 0:
            out.append(ListConstraint(k_min=k, k_max=k, exclude=history))
        elif kind == 1:
            out.append(ListConstraint(k_min=k, k_max=k, category=cat, category_mode="only", exclude=history))
        elif kind == 2:
            out.append(ListConstraint(k_min=k, k_max=k, category=cat, category_mode="exclude", exclude=history))
        elif kind == 3:
            out.append(ListConstraint(k_min=k, k_max=k, category=cat, c_max=c, exclude=history))
        elif kind == 4:
            out.append(ListConstraint(k_min=k, k_max=k, category=cat, c_min=c, exclude=history))
        elif kind == 5:
            out.append(ListConstraint(k_min=k, k_max=k, category=cat, c_min=max(c - 1, 0), c_max=c + 1))
        elif kind == 6:
            cands = tuple(rng.choice(items, size=int(rng.integers(3, 12)), replace=False).tolist())
            out.append(ListConstraint(k_min=k, k_max=k, candidates=cands, exclude=history[:3]))
        else:
            out.append(ListConstraint(k_min=1, k_max=k, exclude=history) if rng.random() < 0.5 else None)
    return out


def build_sentencepiece_tokenizer(out_dir: str | Path, vocab_size: int = 400, seed: int = 0) -> Path:
    """Trains a SentencePiece BPE model (byte fallback, digits split, identity normalisation, as Llama-2's) on
    random titles and list lines, and saves it as an HF tokenizer folder (``LlamaTokenizer``, Llama-2 chat
    template) usable by ``load_tokenizer`` and ``write_tiny_llama(tokenizer_dir=...)``."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    from reclm_jax.testing.tiny_model import LLAMA2_TEMPLATE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = random_titles(3000, seed + 7)
    lines += [f"{j % 20 + 1}. {t}" for j, t in enumerate(lines[:600])]
    lines += ["Please recommend items the user likes. You are an expert recommender engine."] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, num_threads=1, minloglevel=2)
    raw = out / "sp_model"
    raw.mkdir(exist_ok=True)
    (raw / "tokenizer.model").write_bytes(model.getvalue())
    tok = LlamaTokenizer.from_pretrained(str(raw), legacy=False)
    tok.chat_template = LLAMA2_TEMPLATE
    tok.save_pretrained(str(out))
    return out
