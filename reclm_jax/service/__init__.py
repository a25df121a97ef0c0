"""HTTP pieces shared by the services (the teacher's ``/inference`` service and the OpenAI-compatible
``reclm_jax.serve``): the micro-batcher, JSON errors and request bodies, and server start-up."""
