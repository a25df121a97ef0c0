"""A toy RL problem that needs no dataset and no teacher: synthetic prompts and a token reward (``data.source:
toy``, ``reward.kind: toy_tokens``). Tests and smoke runs use it to check that the trainer raises a reward.

The reward gives +1 to every response token whose id is a multiple of ``modulus`` and 0 to the others, so a
random model starts near 1/modulus of its tokens and a policy that learns moves its mass onto those ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

TOY_TASK = "ToyTokens"
_SUBJECTS = ("movies", "books", "films", "songs", "games", "shows", "items", "titles")


def toy_samples(tokenizer: Any, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` RL-shaped samples (``task``, ``input_text``, ``output_text`` "", ``input_field_data``), their prompts
    rendered with the tokenizer's chat template when it has one. Deterministic in (seed, split)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out = []
    for i in range(n):
        k = int(rng.integers(3, 10))
        subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
        text = f"Please recommend {k} {subject} for user {int(rng.integers(100, 1000))}."
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                   add_generation_prompt=True)
        else:
            prompt = text + "\n"
        out.append({"task": TOY_TASK, "input_text": prompt, "output_text": "",
                    "input_field_data": {"item_count": k, "index": i, "split": split}})
    return out


class TokenModulusReward:
    """+1 on each token id divisible by ``modulus`` (a ``Scorer``)."""

    selection = "sum"

    def __init__(self, modulus: int = 4):
        if modulus < 1:
            raise ValueError(f"modulus must be >= 1, got {modulus}")
        self.modulus = modulus

    def __call__(self, samples: Sequence[dict], texts: Sequence[str],
                 token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [(np.asarray(ids, np.int64) % self.modulus == 0).astype(np.float32) for ids in token_ids]
