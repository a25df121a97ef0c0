"""The RL stage (PPO and GRPO on LoRA actor/critic adapters).

Conventions shared by its pure-math modules (``masking``, ``advantages``, ``kl_control``, ``losses``, ``grpo``):
per-token arrays are [B, T] on the *token axis*: index t is about token t of the sequence, so ``logp[b, t]`` is
log pi(token t | tokens < t), ``entropy[b, t]`` the entropy of that distribution, ``values[b, t]`` the critic's
value of the state before token t (the original's values "shifted right by one"), and ``mask[b, t]`` is true where
token t is an action (a response token, EOS included). Rows may be padded on either side and be of any length.
"""
