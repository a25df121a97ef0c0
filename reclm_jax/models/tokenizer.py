"""The one way a model folder's tokenizer is loaded, and the pad id every batch uses.

transformers is imported on first use only, so commands that never tokenize start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reclm_jax.errors import UserError


def load_tokenizer(model_dir: str | Path, key: str = "") -> Any:
    """``AutoTokenizer.from_pretrained(model_dir)`` from a local folder (never a hub download).

    ``key`` names the flag or config key that gave the folder (``--tokenizer``, ``model.path``), for the
    ``UserError`` raised when the folder is missing or holds no loadable tokenizer.
    """
    where = f"{key} {model_dir}" if key else str(model_dir)
    if not Path(model_dir).is_dir():
        raise UserError(f"{where}: folder not found")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # a folder without (or with broken) tokenizer files; transformers' types vary
        raise UserError(f"{where}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


def pad_token_id(tokenizer: Any) -> int:
    """The id padding positions hold, by the one rule of ``special_tokens.resolve_pad_id`` (training batches,
    validation and generation agree). Padding is masked everywhere, so the choice only has to be a valid id."""
    from reclm_jax.models.special_tokens import resolve_pad_id

    return resolve_pad_id(tokenizer)
