"""Rollouts: responses from the actor through one kept ``Sampler``, then the trajectory batch and its statistics.

Per prompt the rows are, in this order (prompt-major, so GRPO's groups are consecutive rows): one greedy response
(``rollout.greedy``, the original's copy 0) and ``sample_num - 1`` sampled ones (temperature, top-k 20, top-p),
or ``sample_num`` sampled ones. Row r of prompt p is global row ``p * sample_num + r``. Each sampled row draws from
its own seed, ``SeedSequence([seed, iteration])`` at its row index, so a rollout depends only on (weights, prompts,
seed, iteration) and a resumed run repeats it exactly. The Sampler takes the new actor weights every iteration
(``update_params``): its programs compile once per (sampling, prompt bucket, batch bucket, output bucket).

Trajectories (``rollout.trajectory``): ``rendered`` (the original, spec §10.3) replaces each response by its list
re-rendered canonically, as SFT's labels are (``parse_list`` then ``render_output_list(titles, "\n" + EOS)``,
tokenized without added specials, so it ends with the EOS token); ``sampled`` keeps the tokens the policy
sampled, the stop token included when the response stopped (a response cut at ``max_new_tokens`` ends without
one and is treated as terminal all the same, as the original). The scorer sees the trajectory's tokens and text.

Layout (the prompt is exactly what the policy saw, after left-truncation: audit R5): tokens int32 [B, P + R]
with the prompt left-padded to P (its bucket) and the response right-padded to R (the bucket of the longest
response); ``attention_mask`` on real tokens; ``action_mask`` on the response tokens.

Constrained rollouts (``rollout.constrained``; the trainer passes the run's ``decoding.ConstrainedCatalogue``):
every row, greedy and sampled, decodes under its sample's ``constraint_for_sample`` (task, ``input_field_data``),
so each response is a list of real, distinct items that obeys the instruction. The statistics below are still
those of the model itself: the unconstrained distribution evaluated on the (constrained) trajectory tokens; the
constraint is part of the environment (docs/differences.md). Constrained lists already have the canonical
tokenization, so ``rendered`` leaves a stopped constrained response unchanged.

``RolloutStats`` holds, on the token axis: the rollout policy's log-probs ``logp_old`` (actor), the reference's
``logp_ref`` (no adapter) and the critic's ``values`` (zeros without a critic), from one jitted function over the
whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reclm_jax.buckets import bucket
from reclm_jax.data.templates import render_output_list
from reclm_jax.decoding import constraints_for_samples
from reclm_jax.errors import UserError
from reclm_jax.eval.parsing import parse_list
from reclm_jax.models.generation import SamplingConfig
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.special_tokens import resolve_stop_ids
from reclm_jax.models.tokenizer import pad_token_id
from reclm_jax.rl.actor_critic import ACTOR, Roles, critic_values, policy_stats
from reclm_jax.rl.config import RolloutSettings
from reclm_jax.train.runtime import Runtime

GREEDY = SamplingConfig()


class RolloutStats(NamedTuple):
    logp_old: jax.Array  # float32 [B, T]
    logp_ref: jax.Array  # float32 [B, T]
    values: jax.Array  # float32 [B, T]


@dataclasses.dataclass
class Trajectories:
    """One rollout: host lists for this process's rows (prompt-major) and the global device batch."""

    samples: list[dict]  # the RL sample of each row
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated tokens, the stop token included
    texts: list[str]  # decoded responses (special tokens skipped)
    stopped: np.ndarray  # bool [rows]: ended on a stop id
    prompt_width: int  # P
    tokens: jax.Array  # int32 [B, P + R]
    attention_mask: jax.Array  # int32 [B, P + R]
    action_mask: jax.Array  # bool [B, P + R]
    stats: RolloutStats | None = None

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])


def row_seeds(seed: int, iteration: int, rows: int, offset: int = 0) -> np.ndarray:
    """uint32 [rows]: the sampling seed of global rows ``offset .. offset + rows - 1`` in ``iteration``."""
    words = np.random.SeedSequence([int(seed), int(iteration), 0x524C]).generate_state(offset + rows, np.uint32)
    return words[offset:]


class Rollout:
    """The actor's Sampler and the jitted statistics pass, kept for a whole run.

    roles: how to rebuild the models from (trainable, frozen); trainable: ``{"lora", ["value_head"]}`` (the
    Sampler reads ``trainable["lora"]``); critic: compute values (PPO) or zeros (GRPO); idx: rendered lists
    are numbered; catalogue: a ``decoding.ConstrainedCatalogue``, with which ``collect`` decodes every row under
    its sample's constraint (``rollout.constrained``), None = unconstrained."""

    def __init__(self, roles: Roles, trainable: dict, frozen: Any, tokenizer: Any, settings: RolloutSettings,
                 runtime: Runtime, *, critic: bool, chunk: int = 128, seed: int = 0, idx: bool = True,
                 catalogue: Any = None):
        if settings.sample_num < 1:
            raise UserError("rollout.sample_num must be >= 1")
        self.s = settings
        self.runtime = runtime
        self.roles = roles
        self.critic = critic
        self.chunk = chunk
        self.seed = seed
        self.idx = idx
        self.catalogue = catalogue
        self.tokenizer = tokenizer
        self.pad_id = pad_token_id(tokenizer)
        self.sampling = SamplingConfig(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
        self.sampler = Sampler((roles.graphdef, trainable["lora"], frozen), pad_id=self.pad_id,
                               stop_ids=resolve_stop_ids(tokenizer), runtime=runtime,
                               prompt_buckets=settings.prompt_buckets)
        self.stop_ids = set(self.sampler.stop_ids)
        self.stats_traces = 0
        self._stats = jax.jit(self._stats_fn)

    # -- generation ---------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], *, sampling: SamplingConfig, seeds: Any = 0,
                 adapter: str | None = ACTOR, max_new_tokens: int | None = None,
                 constraints: Sequence[Any] | None = None) -> tuple[list[list[int]], np.ndarray]:
        """(token lists incl. the stop token, stopped [n]) for this process's ``prompts``; ``constraints``: one
        ``decoding.ListConstraint`` (or None) per prompt, decoded over ``self.catalogue``."""
        limit = max_new_tokens or self.s.max_new_tokens
        extra = self.catalogue.sampler_kwargs(constraints, self.runtime, limits=limit) if constraints is not None \
            else {}
        out = self.sampler(prompts, max_new_tokens=limit, seeds=seeds,
                           sampling=sampling, adapter=adapter, **extra)
        return out.token_lists(), np.asarray(out.stopped)

    def responses(self, prompt_ids: Sequence[Sequence[int]], iteration: int,
                  constraints: Sequence[Any] | None = None) -> tuple[list[list[int]], np.ndarray]:
        """This process's ``prompt_ids`` -> prompt-major responses (``sample_num`` each) and their stop flags;
        ``constraints``: one per prompt (every response of a prompt decodes under it), None = unconstrained."""
        g = self.s.sample_num
        n = len(prompt_ids)
        greedy = 1 if self.s.greedy else 0
        sampled = g - greedy
        ids: list[list[list[int]]] = [[] for _ in range(n)]
        stopped = np.zeros((n, g), bool)
        if greedy:
            toks, stop = self.generate(prompt_ids, sampling=GREEDY, constraints=constraints)
            for p in range(n):
                ids[p].append(toks[p])
            stopped[:, 0] = stop
        if sampled:
            rep = [prompt_ids[p] for p in range(n) for _ in range(sampled)]
            local = n * g
            first = self.runtime.process_index * local  # this process's first global row
            seeds = row_seeds(self.seed, iteration, n * g, first).reshape(n, g)[:, greedy:].reshape(-1)
            rep_cons = None if constraints is None else [constraints[p] for p in range(n) for _ in range(sampled)]
            toks, stop = self.generate(rep, sampling=self.sampling, seeds=seeds.astype(np.int64), constraints=rep_cons)
            for j, t in enumerate(toks):
                ids[j // sampled].append(t)
            stopped[:, greedy:] = stop.reshape(n, sampled)
        return [r for rows in ids for r in rows], stopped.reshape(-1)

    def collect(self, trainable: dict, frozen: Any, samples: Sequence[dict], prompt_ids: Sequence[Sequence[int]],
                iteration: int, stats: bool = True) -> Trajectories:
        """Generates, builds the trajectory batch and dispatches its statistics (not waited for; ``stats``
        False leaves ``traj.stats`` None for the caller to compute with ``self.stats``). With a catalogue, each
        prompt decodes under its sample's constraint."""
        constraints = constraints_for_samples(samples) if self.catalogue is not None else None
        responses, stopped = self.responses(prompt_ids, iteration, constraints)
        g = self.s.sample_num
        rows_prompts = [list(prompt_ids[p]) for p in range(len(prompt_ids)) for _ in range(g)]
        rows_samples = [samples[p] for p in range(len(samples)) for _ in range(g)]
        texts = self.decode(responses)
        if self.s.trajectory == "rendered":
            responses = [self.render(t) for t in texts]
            texts = self.decode(responses)
        traj = self.trajectories(rows_samples, rows_prompts, responses, texts, stopped)
        if stats:
            traj.stats = self.stats(trainable, frozen, traj)
        return traj

    def decode(self, responses: Sequence[Sequence[int]]) -> list[str]:
        """Response texts as the reward reads them: special tokens skipped, no clean-up of spaces."""
        return list(self.tokenizer.batch_decode(responses, skip_special_tokens=True,
                                                clean_up_tokenization_spaces=False))

    def render(self, text: str) -> list[int]:
        """The canonical token ids of a response's list: its titles (``eval.parsing.parse_list``) rendered as SFT
        renders labels, ``"1. A\n 2. B\n" + EOS``; an empty list is the EOS alone."""
        titles = parse_list(text, self.idx)
        eos = self.tokenizer.eos_token or ""
        out = render_output_list(titles, "\n" + eos, self.idx).strip() if titles else eos
        ids = self.tokenizer(out, add_special_tokens=False)["input_ids"]
        return list(ids) or [self.pad_id]

    # -- trajectory batch ---------------------------------------------------------------------------------
    def widths(self, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> tuple[int, int]:
        """(P, R): the prompt bucket and the response bucket, agreed over processes."""
        longest_p = max(len(p) for p in prompt_ids)
        longest_r = max(max(len(r) for r in responses), 1)
        longest_p, longest_r = self.runtime.agree_max([longest_p, longest_r])
        p = bucket(longest_p, self.s.prompt_buckets)
        r = bucket(longest_r, self.s.response_buckets or None, 16)
        return p, r

    def trajectories(self, samples, prompt_ids, responses, texts, stopped) -> Trajectories:
        p, r = self.widths(prompt_ids, responses)
        rows = len(prompt_ids)
        tokens = np.full((rows, p + r), self.pad_id, np.int32)
        attn = np.zeros((rows, p + r), np.int32)
        action = np.zeros((rows, p + r), bool)
        for i, (q, a) in enumerate(zip(prompt_ids, responses)):
            tokens[i, p - len(q):p] = q
            attn[i, p - len(q):p + len(a)] = 1
            tokens[i, p:p + len(a)] = a
            action[i, p:p + len(a)] = True
        place = self.runtime.place
        return Trajectories(list(samples), [list(x) for x in prompt_ids], [list(x) for x in responses], texts,
                            np.asarray(stopped), p, place(tokens), place(attn), place(action))

    def place_scores(self, traj: Trajectories, scores: Sequence[np.ndarray]) -> jax.Array:
        """Per-response token rewards (the scorer's output) -> float32 [B, T] on the token axis."""
        if len(scores) != len(traj.response_ids):
            raise ValueError(f"the scorer returned {len(scores)} reward arrays for {len(traj.response_ids)} responses")
        out = np.zeros((len(scores), traj.width), np.float32)
        p = traj.prompt_width
        for i, (s, ids) in enumerate(zip(scores, traj.response_ids)):
            s = np.asarray(s, np.float32).reshape(-1)
            if s.shape[0] != len(ids):
                raise ValueError(f"response {i}: {s.shape[0]} rewards for {len(ids)} tokens")
            out[i, p:p + len(ids)] = s
        return self.runtime.place(out)

    # -- statistics ---------------------------------------------------------------------------------------
    def _stats_fn(self, trainable, frozen, tokens, attention_mask, action_mask) -> RolloutStats:
        self.stats_traces += 1  # runs only while tracing
        model = self.roles.model(trainable, frozen)
        logp_old, _ = policy_stats(model, tokens, attention_mask, action_mask, adapter=ACTOR, chunk=self.chunk,
                                   entropy=False)
        logp_ref, _ = policy_stats(model, tokens, attention_mask, action_mask, adapter=None, chunk=self.chunk,
                                   entropy=False)
        if self.critic:
            values = critic_values(model, self.roles.value_head(trainable), tokens, attention_mask)
            values = jnp.where(action_mask, values, 0.0)
        else:
            values = jnp.zeros_like(logp_old)
        return RolloutStats(logp_old, logp_ref, values)

    def stats(self, trainable: dict, frozen: Any, traj: Trajectories) -> RolloutStats:
        with self.runtime.activate():
            return self._stats(trainable, frozen, traj.tokens, traj.attention_mask, traj.action_mask)
