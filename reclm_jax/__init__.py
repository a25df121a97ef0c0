"""reclm-jax: fine-tune Llama-family LLMs into controllable recommenders with JAX and Flax NNX."""

__version__ = "0.1.0"
