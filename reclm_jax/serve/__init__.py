"""``python -m reclm_jax.serve``: an OpenAI-compatible HTTP server over the library's ``Sampler``.

Modules: ``config`` (settings), ``protocol`` (request validation), ``engine`` (model, tokenizer, Sampler and the
batch runner), ``detok`` (token pieces), ``outputs`` (choices and responses), ``sse`` (streamed chunks), ``app``
(routes), ``__main__`` (the command). The queueing is the shared ``reclm_jax.service.batcher.MicroBatcher``.
"""
