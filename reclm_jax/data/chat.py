"""Chat formats: how a template's system prompt, first turn and instruction become one prompt string.

- ``llama-2``: FastChat 0.2.33's "llama-2" conversation (the paper version):
  ``[INST] <<SYS>>\\n{sys}\\n<</SYS>>\\n\\n{u1} [/INST] {a1} </s><s>[INST] {u2} [/INST]``, then ``.strip()``.
- ``hf``: the tokenizer's own ``apply_chat_template`` with the system turn, the first turn, the acknowledgement,
  the instruction and the generation prompt (SmolLM2, Llama-3, ...). Not stripped: the generation prompt's
  trailing newline belongs to it.
- ``none``: ``sys + first_turn[0] + instruction`` (the original's path without ``--llama2_chat_template``).
"""

from __future__ import annotations

from typing import Any, Sequence

from reclm_jax.errors import UserError

CHAT_FORMATS = ("llama-2", "hf", "none")

_L2_SYSTEM = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n"
_L2_ROLES = ("[INST]", "[/INST]")
_L2_SEPS = (" ", " </s><s>")


def llama2_prompt(system: str, messages: Sequence[str | None]) -> str:
    """FastChat "llama-2" ``get_prompt``: alternating user/assistant messages; a falsy message (the final
    ``None``) leaves only its role tag, which is how the prompt ends in ``[/INST]``."""
    out = _L2_SYSTEM.format(system=system) if system else "[INST] "
    for i, message in enumerate(messages):
        tag = _L2_ROLES[i % 2]
        if message:
            out += message + " " if i == 0 else tag + " " + message + _L2_SEPS[i % 2]
        else:
            out += tag
    return out


class ChatFormat:
    """Renders conversations in one of ``CHAT_FORMATS``; ``hf`` needs a tokenizer with a chat template."""

    def __init__(self, name: str, tokenizer: Any = None):
        if name not in CHAT_FORMATS:
            raise UserError(f"unknown chat template {name!r}; choose one of {', '.join(CHAT_FORMATS)}")
        if name == "hf":
            if tokenizer is None:
                raise UserError("chat template 'hf' needs a tokenizer (--tokenizer)")
            if not getattr(tokenizer, "chat_template", None):
                raise UserError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                                f"use --chat_template llama-2 or none")
        self.name = name
        self.tokenizer = tokenizer

    def rec_prompt(self, system: str, first_turn: tuple[str, str], instruction: str) -> str:
        """The prompt of a recommendation template (two user turns, one acknowledgement)."""
        if self.name == "none":
            return f"{system}{first_turn[0]}{instruction}".strip()
        if self.name == "llama-2":
            return llama2_prompt(system, [first_turn[0], first_turn[1], instruction, None]).strip()
        return self._hf(system, [first_turn[0], first_turn[1], instruction])

    def chat_prompt(self, system: str, turns: Sequence[str]) -> str:
        """A general conversation ending with a user turn (ShareChatGPT); not stripped, as the original."""
        if self.name == "none":
            raise UserError("ShareChatGPT needs a chat template (llama-2 or hf), as in the original")
        if self.name == "llama-2":
            return llama2_prompt(system, [*turns, None])
        return self._hf(system, list(turns))

    def _hf(self, system: str, turns: list[str]) -> str:
        messages = [{"role": "system", "content": system}]
        messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
