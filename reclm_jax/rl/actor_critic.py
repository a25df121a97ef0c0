"""The model calls of RL: actor / reference log-probs and critic values on [prompt + response] batches.

One frozen backbone carries every role, chosen per call: ``adapter="actor"`` (its LoRA factors and, with
``lm_head_full_tune``, its own ``lm_head`` copy), ``adapter=None`` (the reference policy: the SFT model as
loaded) and ``adapter="critic"`` followed by the ``ValueHead``. All outputs are on the token axis of
``reclm_jax.rl`` (index t is about token t; column 0 is 0):

- ``logp[b, t]`` = log pi(tokens[b, t] | tokens[b, :t]), from the raw logits (temperature 1, as the original,
  whatever the sampling temperature), float32 [B, T];
- ``entropy[b, t]``: the entropy of that same distribution (the one that predicted token t);
- ``values[b, t]`` = V(state before token t) = head(h[t - 1]) (the original's values "shifted right by one").

Batch layout (``rollout.py``): tokens int32 [B, T] = the prompt left-padded to its bucket, then the response
right-padded; ``attention_mask`` marks real tokens (positions are their cumulative count, so prompt and response
positions are the ones the policy decoded with: audit R6); ``action_mask`` marks response tokens, EOS included.
Log-probs are only computed for action tokens (chunks of prompt positions skip the LM head).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reclm_jax.models.token_stats import token_logprobs
from reclm_jax.models.value_head import ValueHead
from reclm_jax.rl.masking import to_token_axis

ACTOR = "actor"
CRITIC = "critic"


def policy_stats(model, tokens: jnp.ndarray, attention_mask: jnp.ndarray, action_mask: jnp.ndarray, *,
                 adapter: str | None, chunk: int = 128, entropy: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(logp, entropy)`` float32 [B, T] on the token axis for ``adapter`` (None: the reference policy); both 0
    off ``action_mask``. ``entropy=False`` skips its work and returns zeros."""
    hidden = model(tokens, attention_mask=attention_mask, adapter=adapter, compute_logits=False).hidden

    def head(h, key):
        return model.head(h, adapter=adapter)

    logp, ent = token_logprobs(head, hidden, tokens, action_mask[:, 1:], chunk=chunk, entropy=entropy)
    logp = to_token_axis(logp)
    ent = to_token_axis(ent) if ent is not None else jnp.zeros_like(logp)
    return logp, ent


def critic_values(model, value_head: ValueHead, tokens: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
    """``values`` float32 [B, T]: values[:, t] = value_head(h[:, t - 1]) of the critic pass, values[:, 0] = 0."""
    hidden = model(tokens, attention_mask=attention_mask, adapter=CRITIC, compute_logits=False).hidden
    return to_token_axis(value_head(hidden)[:, :-1])


@dataclasses.dataclass(frozen=True)
class Roles:
    """How to rebuild the models inside a jitted function from the trainable pytree.

    trainable = ``{"lora": nnx.State (the adapters' LoRA factors and owned copies), "value_head": nnx.State}``
    (no ``value_head`` without a critic). ``graphdef``/``head_graphdef`` come from the one split at start-up."""

    graphdef: Any
    head_graphdef: Any = None

    def model(self, trainable: dict, frozen: Any):
        return nnx.merge(self.graphdef, trainable["lora"], frozen)

    def value_head(self, trainable: dict) -> ValueHead:
        return nnx.merge(self.head_graphdef, trainable["value_head"])


def new_value_head(hidden_size: int, inner: int, seed: int) -> tuple[Any, nnx.State]:
    """(graphdef, float32 state) of a fresh value head (orthogonal init as the original; the seed is the run's)."""
    head = ValueHead(hidden_size, inner, rngs=nnx.Rngs(jax.random.key(seed)))
    return nnx.split(head)
