"""The server's settings (frozen; built from the command line by ``__main__``)."""

from __future__ import annotations

import dataclasses

from reclm_jax.errors import UserError

# Most alternatives per token that logprobs / top_logprobs may ask for (OpenAI's chat limit, vLLM's default
# max_logprobs). Any request for alternatives runs the program that keeps this many, sliced per request.
MAX_TOP_LOGPROBS = 20
BATCHING = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    served_model_name: str  # what /v1/models lists and requests' "model" must name
    max_batch: int = 16  # rows (prompts x n) per decode call
    max_wait_ms: float = 5.0  # how long a request waits for company before its batch starts
    max_queue: int = 256  # requests waiting for a batch before 503
    max_n: int = 64  # choices per prompt
    max_rows: int = 256  # rows (prompts x n) per request
    max_model_len: int = 0  # prompt + completion tokens; 0 = the model's max_position_embeddings
    default_max_tokens: int = 16  # completions without max_tokens (OpenAI's and vLLM's default; chat: the context)
    batching: str = "continuous"  # "continuous": rows join and leave between decoding chunks; "static": batches

    def __post_init__(self):
        if not self.served_model_name:
            raise UserError("--served-model-name must not be empty")
        for f in ("max_batch", "max_queue", "max_n", "max_rows", "default_max_tokens"):
            if getattr(self, f) < 1:
                raise UserError(f"--{f.replace('_', '-')} must be at least 1, got {getattr(self, f)}")
        if self.batching not in BATCHING:
            raise UserError(f"--batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_model_len < 0:
            raise UserError(f"--max-model-len must be >= 0 (0 = the model's), got {self.max_model_len}")
