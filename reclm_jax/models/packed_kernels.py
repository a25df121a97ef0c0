"""``PackedKernels``: a model's kernels packed once for the native few-row products, kept per set of weights.

The Sampler and the SlotDecoder trace their decoding programs inside ``kernels.packed_weights(packed)``, where
``Linear`` picks its packed kernel by uid (``linear.pack_linears``); packing every call would read the weights
twice per call, so the packing is computed once and kept while the weights are the same arrays.
"""

from __future__ import annotations

import functools
import weakref

import jax
from flax import nnx

from reclm_jax.models.linear import pack_linears
from reclm_jax.models.llama import decoding_tables
from reclm_jax.models.lora import mesh_of


class PackedKernels:
    """{Linear uid: kernel packed for the native few-row product} (``linear.pack_linears``) of one model's weights,
    computed once per set of weights and kept, so decoding calls stream packed kernels without repacking (one
    pass over the weights, about 0.2 s for SmolLM2 on the 2-core dev machine). {} off the CPU kernels, without
    the native library, and on a mesh of more than one device (the native calls there would gather sharded
    weights). Costs one more copy of the packed kernels in memory while the weights are held."""

    def __init__(self, graphdef):
        self.graphdef = graphdef
        self._kept: tuple[list, dict] | None = None  # (weak references to the weights packed, the packing)

    def __call__(self, trainable, frozen, runtime=None) -> dict:
        # Kept while the weights are the same arrays (weak references: a kept packing never keeps old weights
        # alive, and a freed array's id can never be mistaken for a live one); any swap repacks.
        leaves = jax.tree.leaves((trainable, frozen))
        if self._kept is not None:
            refs, packed = self._kept
            if len(refs) == len(leaves) and all(r() is x for r, x in zip(refs, leaves)):
                return packed
        mesh = getattr(runtime, "mesh", None) or mesh_of((trainable, frozen))
        multi = mesh is not None and mesh.size > 1
        packed = {} if multi else _pack_program(self.graphdef)(trainable, frozen)
        self._kept = ([weakref.ref(x) for x in leaves], packed)
        return packed


@functools.lru_cache(maxsize=8)
def _pack_program(graphdef):
    """The jitted ``pack_linears`` (and ``llama.decoding_tables``) of one model structure (shared by every Sampler
    of it, compiled once)."""

    def pack(trainable, frozen):
        model = nnx.merge(graphdef, trainable, frozen)
        return {**pack_linears(model), **decoding_tables(model)}

    return jax.jit(pack)
