"""What the RL trainer asks of a reward: the ``Scorer`` interface, and the NR-20.1 scorer built on ``rl.reward``.

A scorer is any callable

    score(samples: list[dict], texts: list[str], token_ids: list[list[int]]) -> list[np.ndarray]

given, per response (rows in the trainer's order), its RL sample (``task``, ``input_field_data``, ...), its
decoded text (special tokens skipped) and its token ids (the sampled tokens the policy is trained on, the stop
token included). It returns one float32 array per response, as long as its token ids: the reward of each token
(index j is the reward received for emitting token j; zeros where there is none). The trainer puts them on the
token axis; PPO adds its KL penalty, GRPO reads the sequence reward from them (``grpo.outcome``).

An optional attribute ``selection`` ("last" or "sum", default "sum") says which figure validation selects the
best adapter by: the reward on the last token (NR-20's list reward, x10: the original's ``RewardSum``) or the
summed token rewards. An optional method ``score(samples, texts, token_ids) -> (token rewards, list rewards)``
also gives each response's list reward on its own (the last token can carry an item reward too, when a
response was cut before its stop token); validation reports it as ``RewardSum`` (``score_with_list_rewards``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

Scorer = Callable[[list[dict], list[str], list[list[int]]], list[np.ndarray]]


def selection_of(scorer: Scorer) -> str:
    return getattr(scorer, "selection", "sum")


def score_with_list_rewards(scorer: Scorer, samples: Sequence[dict], texts: Sequence[str],
                            token_ids: Sequence[Sequence[int]]) -> tuple[list[np.ndarray], list[float]]:
    """(token rewards, one list reward per response): the scorer's own ``score`` when it has one, else its
    selection figure (the last token's reward or the sum)."""
    if hasattr(scorer, "score"):
        return scorer.score(list(samples), list(texts), [list(t) for t in token_ids])
    scores = scorer(list(samples), list(texts), [list(t) for t in token_ids])
    last = selection_of(scorer) == "last"
    return scores, [float(r[-1] if last else np.sum(r)) if len(r) else 0.0 for r in scores]


class NR20Scorer:
    """NR-20.1 (``rl.reward.RewardModel``): item rewards on the tokens ending their lines, the list reward (x10)
    on the last token (``rl.token_rewards``). One teacher ``ranking`` call per batch."""

    selection = "last"

    def __init__(self, reward_model: Any, tokenizer: Any, idx: bool = True):
        self.model = reward_model
        self.tokenizer = tokenizer
        self.idx = idx

    def __call__(self, samples: Sequence[dict], texts: Sequence[str],
                 token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return self.score(samples, texts, token_ids)[0]

    def score(self, samples: Sequence[dict], texts: Sequence[str],
              token_ids: Sequence[Sequence[int]]) -> tuple[list[np.ndarray], list[float]]:
        """(token rewards float32 [T] per response, list reward (x10) per response)."""
        from reclm_jax.rl.token_rewards import decode_response, token_rewards

        # The text the offsets are measured in is decoded from the ids here, so placement never depends on how
        # the caller decoded (it decodes the same way: special tokens skipped, no clean-up).
        responses = [decode_response(self.tokenizer, ids) for ids in token_ids]
        rewards = self.model.score([(s["task"], s["input_field_data"], r.text) for s, r in zip(samples, responses)])
        tokens = [token_rewards(r, rw.item_rewards, rw.list_reward, self.idx, length=max(len(r.ids), 1))
                  for r, rw in zip(responses, rewards)]
        return tokens, [float(rw.list_reward) for rw in rewards]


def nr20_scorer(ctx: Any, teacher: Any, tokenizer: Any, alpha: float = 0.5, vague_mapping: bool = False) -> NR20Scorer:
    """The NR-20.1 scorer for a task context (its item index and categories) and teacher."""
    from reclm_jax.rl.reward import RewardCatalogue, RewardModel, RewardSettings

    catalogue = RewardCatalogue.build(ctx.index, ctx.raw.category2item)
    settings = RewardSettings(alpha=alpha, idx=ctx.s.idx, vague_mapping=vague_mapping)
    return NR20Scorer(RewardModel(catalogue, teacher, settings), tokenizer, idx=ctx.s.idx)
