"""The native decoding kernels of ``kernels="cpu"`` (``native/*.cc``, XLA FFI custom calls) and their build.

A decoding step multiplies a few rows (one per sequence) by every weight matrix and attends once over the KV
cache. XLA:CPU runs the products with its bf16 library kernel, which is slow at a few rows, and the attention
as many tiny batched products (profiles in docs/performance.md). Two kernels replace them, sharing one pool of
spinning worker threads (``native/pool.h``) so every core works on each product:

- ``native_dot`` (``bf16_dot.cc``): bf16 x bf16 -> f32 products with at most ``MAX_ROWS`` rows (training and
  prefill keep XLA's kernel). With two or more rows the untransposed product sums in vdpbf16ps' pair order
  along K (the odd product of a pair first, every add rounded to f32), the same bits on every build. One row
  (batch-1 decoding, bound by streaming the weights) is split along K into a fixed number of blocks whose
  partial sums are added in order, and the transposed product (a tied LM head) sums in another order too: both
  within f32 rounding of XLA's, and independent of the thread count.
- ``packed_dot`` (``packed_dot.cc``): the same products against a kernel packed once per decoding call
  (``pack_kernel``: each 64-column strip contiguous, in vdpbf16ps pairs). The strip kernel's strided reads of
  [K, N] bound it at a few rows; packed it streams, with the same bits as ``native_dot`` at every row count.
- ``decode_attention`` (``decode_attention.cc``): one new token's attention over a bf16 cache, writing its key
  and value into the cache in place; the XLA path's numbers to f32 rounding.
- ``amx_dot`` / ``amx_packed_dot`` / ``amx_tn_dot`` (``amx_dot.cc``, the ``amx`` build only): products of more
  than ``MAX_ROWS`` rows (prefill, training forwards, the SASRec teacher's whole step) on Intel AMX tiles, the
  exact bf16 products summed in f32 in order along K (within f32 rounding of XLA's); ``amx_tn_dot`` is a weight
  gradient (a^T b, the rows contracted) that transposes a itself. Routed by ``amx_applies`` / ``has_amx``.

The library is compiled with the system's C++ compiler the first time it is needed, into
``$RECLM_JAX_CACHE/native/<hash>/`` (default ``~/.cache/reclm_jax``), in one of four builds (``cpu_variant``):
``amx`` on a CPU with AVX512-BF16 and AMX-BF16 (Sapphire Rapids and later: ``bf16`` plus the tile products),
``bf16`` on a CPU with AVX512-BF16 (vdpbf16ps), ``avx512`` on one with plain AVX-512 (F, BW, VL: Skylake-SP,
Cascade Lake, Ice Lake), where ``native/bf16_ops.h`` forms the same pair products with two FMAs each, and
``avx2`` on one with AVX2 and FMA only (AMD Zen 1-3, Intel Haswell to Comet Lake): ``native/avx2_*.cc``, the same
four targets in 256-bit registers (``avx2_ops.h``). Without AVX512-BF16 XLA:CPU has no fast bf16 product at all
(a bf16 SmolLM2 decoding step took 51 ms at batch 1 and 215 ms at 16 on a 2-core Skylake-SP), so the kernels
matter even more there. Products of bf16 values are exact in f32, so every build sums the same f32 terms in the
same order, and the tests check those bits against an emulation of the order. XLA:CPU's own bf16 dot (a YNNPACK
fusion in jax 0.10) sums in that order on Zen 4/5, Skylake-SP and Zen 2, so there the products are bit-identical
to the XLA path's; on Sapphire Rapids its kernel sums in another order (f32 rounding apart, ~1e-6). The kernels
are used only where a build applies, with a C++ compiler present, unless ``RECLM_JAX_NATIVE=0``. Everywhere
else (x86 CPUs without AVX2 and FMA, other architectures), and whenever the library cannot be built (the
reason is logged), the XLA path runs. ``RECLM_JAX_NATIVE_THREADS`` sets the pool's threads (default: the cores
this process may use).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

MAX_ROWS = 128  # above this XLA's kernel is as fast (measured: 64 rows still 1.2x faster natively)
NATIVE_DIR = Path(__file__).parent / "native"
_TARGETS = ("reclm_dot_kn", "reclm_dot_nk", "reclm_dot_packed", "reclm_decode_attention")
AMX_TARGETS = ("reclm_amx_kn", "reclm_amx_nk", "reclm_amx_packed", "reclm_amx_tn")  # the amx build's, besides _TARGETS

# The sources of each build: the AVX-512 kernels (both AVX-512 builds), or their 256-bit AVX2 forms, which export
# the same four targets.
AVX512_SOURCES = ("bf16_dot.cc", "packed_dot.cc", "decode_attention.cc")
AVX2_SOURCES = ("avx2_dot.cc", "avx2_attention.cc")
VARIANT_SOURCES = {"amx": AVX512_SOURCES + ("amx_dot.cc",), "bf16": AVX512_SOURCES, "avx512": AVX512_SOURCES,
                   "avx2": AVX2_SOURCES}
SOURCES = tuple(dict.fromkeys(AVX512_SOURCES + AVX2_SOURCES + ("amx_dot.cc",)))
HEADERS = ("pool.h", "bf16_ops.h", "avx2_ops.h", "attention_entry.h")
# The compiler flags of each build; the AVX-512 kernels need AVX512F/BW/VL either way (masked 16-bit loads,
# permutes).
VARIANT_FLAGS = {"amx": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-mamx-tile", "-mamx-bf16"),
                 "bf16": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"),
                 "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"),
                 "avx2": ("-mavx2", "-mfma", "-mf16c")}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_variant(flags: set[str] | None = None) -> str | None:
    """The native build this CPU runs: "amx" (AVX512-BF16 and AMX-BF16 tiles: the "bf16" build plus the many-row
    tile products of ``amx_dot``), "bf16" (AVX512-BF16), "avx512" (AVX512F/BW/VL and FMA, the pair products
    emulated), "avx2" (AVX2 and FMA: 256-bit forms of the same products) or None (no build applies: the XLA
    path). ``flags``: /proc/cpuinfo's, by default this machine's."""
    flags = _cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512vl", "fma"} <= flags:
        if "avx512_bf16" in flags:
            return "amx" if {"amx_tile", "amx_bf16"} <= flags else "bf16"
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return None


@functools.cache
def has_bf16_dot() -> bool:
    """Whether XLA:CPU's bf16 products run on a bf16 dot instruction here (AVX512-BF16, or not a CPU backend:
    GPUs and TPUs never take the ``cpu`` kernels' path). Without it ``matmul.py`` widens large products to f32."""
    return jax.default_backend() != "cpu" or "avx512_bf16" in _cpu_flags() or os.environ.get(
        "RECLM_JAX_WIDEN_BF16", "auto") == "0"


def _cache_dir(variant: str) -> Path:
    root = Path(os.environ.get("RECLM_JAX_CACHE", Path.home() / ".cache" / "reclm_jax"))
    digest = hashlib.sha256(f"{jax.__version__} {variant}".encode())
    for name in (*SOURCES, *HEADERS):
        digest.update((NATIVE_DIR / name).read_bytes())
    key = digest.hexdigest()[:16]
    return root / "native" / key


def _build(out: Path, variant: str) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built next to its final place and renamed, so concurrent processes never load a half-written library.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        lib = Path(tmp) / out.name
        cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", *VARIANT_FLAGS[variant], "-pthread",
               f"-I{jax.ffi.include_dir()}",
               *(str(NATIVE_DIR / name) for name in VARIANT_SOURCES[variant]), "-o", str(lib)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {', '.join(VARIANT_SOURCES[variant])} failed: "
                               f"{done.stderr.strip()[-2000:]}")
        os.replace(lib, out)


def _open(variant: str, suffix: str) -> ctypes.CDLL | None:
    """Builds (once per source version) and loads the ``variant`` build, registers its targets as
    ``<target><suffix>`` and sizes its worker pool; None (reason logged) where it cannot be built or loaded."""
    path = _cache_dir(variant) / "reclm_native.so"
    try:
        if not path.exists():
            _build(path, variant)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        log.warning("native kernels (%s build) unavailable (%s); the XLA path is used", variant, e)
        return None
    for name in _TARGETS + (AMX_TARGETS if variant == "amx" else ()):
        jax.ffi.register_ffi_target(name + suffix, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    threads = int(os.environ.get("RECLM_JAX_NATIVE_THREADS", 0)) or len(os.sched_getaffinity(0))
    lib.reclm_set_threads(ctypes.c_int(threads))
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded, registered library, or None where the native product does not apply (reason logged)."""
    if os.environ.get("RECLM_JAX_NATIVE", "1") == "0":
        return None
    variant = cpu_variant()
    if variant is None:
        log.info("native kernels: this CPU has neither AVX-512 nor AVX2 with FMA; the XLA path is used")
        return None
    return _open(variant, "")


def other_builds(flags: set[str] | None = None) -> tuple[str, ...]:
    """Builds this CPU can run besides its own (``cpu_variant``): the AVX2 build on an AVX-512 CPU. Never used by
    the model; the tests check them against XLA too, so an AVX-512 test machine also covers the AVX2 kernels (the
    amx build's few-row kernels are the bf16 build's sources). ``flags``: as ``cpu_variant``'s."""
    flags = _cpu_flags() if flags is None else flags
    own = cpu_variant(flags)
    return ("avx2",) if own not in (None, "avx2") and cpu_variant(flags - {"avx512f"}) == "avx2" else ()


@functools.cache
def load_build(variant: str) -> bool:
    """Loads one of ``other_builds()``, its targets registered with the suffix ``_<variant>`` (the ``build``
    argument of ``native_dot``, ``packed_dot`` and ``decode_attention``); whether that worked."""
    return variant in other_builds() and _open(variant, f"_{variant}") is not None


def _target(name: str, build: str | None) -> str:
    return name if build is None else f"{name}_{build}"


def dot_applies(x: jnp.ndarray, w: jnp.ndarray) -> bool:
    """Whether ``native_dot`` serves this product: few-row bf16 x bf16 on a machine that built the kernel."""
    return (x.ndim == 2 and x.shape[0] <= MAX_ROWS and x.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16
            and library() is not None)


def native_dot(x: jnp.ndarray, w: jnp.ndarray, transposed: bool = False, build: str | None = None) -> jnp.ndarray:
    """bf16 x [M, K] @ w [K, N] (w [N, K] when ``transposed``) -> float32 [M, N]. Needs ``dot_applies``.
    ``build``: this machine's build (None) or one loaded by ``load_build``."""
    n = w.shape[0] if transposed else w.shape[1]
    target = _target("reclm_dot_nk" if transposed else "reclm_dot_kn", build)
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32),
                            vmap_method="sequential")(x, w)


@functools.cache
def has_amx() -> bool:
    """Whether ``amx_dot`` runs here: the amx build loaded and the OS granted the tile state (``RECLM_JAX_AMX=0``
    turns it off, for A/B measurements)."""
    if os.environ.get("RECLM_JAX_AMX", "1") == "0" or cpu_variant() != "amx":
        return False
    lib = library()
    if lib is None:
        return False
    if not lib.reclm_amx_ready():
        log.warning("native kernels: the OS refused the AMX tile state; many-row products stay on XLA")
        return False
    return True


# The fewest rows a product takes the tiles with. Unpacked (training, the LoRA factors): above the few-row
# kernels' MAX_ROWS. Against packed kernels (a decoding step) from 16 rows: the 30 layers' products of SmolLM2 on a
# 2-core Sapphire Rapids took 22 / 23 / 44 ms on the tiles at 16 / 32 / 64 rows against 36 / 67 / 125 ms with
# vdpbf16ps (packed_dot.cc); at 8 rows 22 against 24, where the products stream the weights either way.
AMX_MIN_ROWS = MAX_ROWS + 1
AMX_PACKED_MIN_ROWS = 16


def amx_applies(x: jnp.ndarray, w: jnp.ndarray, min_rows: int = AMX_MIN_ROWS) -> bool:
    """Whether ``amx_dot`` (``amx_packed_dot`` with ``min_rows=AMX_PACKED_MIN_ROWS``) serves this product: bf16 x
    bf16 with at least ``min_rows`` rows, on a CPU with AMX tiles (``has_amx``)."""
    return (x.ndim == 2 and w.ndim == 2 and x.shape[0] >= min_rows and x.dtype == jnp.bfloat16
            and w.dtype == jnp.bfloat16 and library() is not None and has_amx())


def amx_dot(x: jnp.ndarray, w: jnp.ndarray, transposed: bool = False) -> jnp.ndarray:
    """bf16 x [M, K] @ w [K, N] (w [N, K] when ``transposed``) -> float32 [M, N] on AMX tiles: the exact bf16
    products summed in f32 in order along K, within f32 rounding of XLA's bf16 dot. Needs ``has_amx``."""
    if not has_amx():
        raise RuntimeError("amx_dot: this machine has no usable AMX tiles (native_kernels.has_amx)")
    n = w.shape[0] if transposed else w.shape[1]
    return jax.ffi.ffi_call("reclm_amx_nk" if transposed else "reclm_amx_kn",
                            jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32), vmap_method="sequential")(x, w)


def amx_tn_dot(a: jnp.ndarray, b: jnp.ndarray, ones_row: bool = False) -> jnp.ndarray:
    """bf16 a [M, K]^T @ b [M, N] -> float32 [K, N] on AMX tiles, the rows of both contracted (a weight
    gradient), with no transpose of ``a`` in XLA; ``ones_row``: one more row, [K + 1, N], the column sums of b (a
    bias gradient from the same products). Sums as ``amx_dot``'s. Needs ``has_amx``."""
    if not has_amx():
        raise RuntimeError("amx_tn_dot: this machine has no usable AMX tiles (native_kernels.has_amx)")
    out = jax.ShapeDtypeStruct((a.shape[1] + int(ones_row), b.shape[1]), jnp.float32)
    return jax.ffi.ffi_call("reclm_amx_tn", out, vmap_method="sequential")(a, b, ones_row=bool(ones_row))


def amx_packed_dot(x: jnp.ndarray, wp: jnp.ndarray, n: int) -> jnp.ndarray:
    """``amx_dot`` against w [K, n] in its ``pack_kernel`` form (no packing per call) -> float32 [M, n]."""
    if not has_amx():
        raise RuntimeError("amx_packed_dot: this machine has no usable AMX tiles (native_kernels.has_amx)")
    return jax.ffi.ffi_call("reclm_amx_packed", jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32),
                            vmap_method="sequential")(x, wp)


STRIP = 64  # columns per packed strip (packed_dot.cc)


def pack_applies(w: jnp.ndarray) -> bool:
    """Whether a [K, N] kernel is worth packing for ``packed_dot``: bf16, on a machine that built the kernels."""
    return w.ndim == 2 and w.dtype == jnp.bfloat16 and library() is not None


def pack_kernel(w: jnp.ndarray) -> jnp.ndarray:
    """bf16 w [K, N] -> wp [ceil(N / 64), ceil(K / 2), 64, 2] with wp[s, j, c, t] = w[2j + t, 64s + c], zeros past
    K and N: each 64-column strip one contiguous block, in the (k, k+1) pairs the product multiplies."""
    k, n = w.shape
    strips, pairs = -(-n // STRIP), -(-k // 2)
    w = jnp.pad(w, ((0, 2 * pairs - k), (0, STRIP * strips - n)))
    return w.reshape(pairs, 2, strips, STRIP).transpose(2, 0, 3, 1)


def packed_dot(x: jnp.ndarray, wp: jnp.ndarray, n: int, build: str | None = None) -> jnp.ndarray:
    """bf16 x [M, K] @ w [K, n] from its ``pack_kernel`` form -> float32 [M, n], ``native_dot``'s bits.
    Needs ``dot_applies``-sized x (at most ``MAX_ROWS`` rows). ``build``: as ``native_dot``'s."""
    return jax.ffi.ffi_call(_target("reclm_dot_packed", build), jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32),
                            vmap_method="sequential")(x, wp)


def attention_applies(q: jnp.ndarray, keys: jnp.ndarray) -> bool:
    """Whether ``decode_attention`` serves this step: one new token, bf16 queries and cache, head_dim a
    multiple of 32 (at most 256), at most 16 query heads per KV head, on a machine that built the kernel."""
    b, t, n, h = q.shape
    kv = keys.shape[1]
    return (t == 1 and q.dtype == jnp.bfloat16 and keys.dtype == jnp.bfloat16 and h % 32 == 0 and h <= 256
            and n % kv == 0 and n // kv <= 16 and library() is not None)


def decode_attention(q, k_new, v_new, keys, values, mask, end, scale: float, build: str | None = None):
    """One decoding step's attention, writing the new key/value into the caches in place.

    q [B, 1, N, H], k_new / v_new [B, 1, K, H], keys / values [B, K, S, H], all bf16; mask bool [B, 1, 1, S]
    (the slots the new token may attend to, its own included; none beyond ``end``); end int32 scalar, the slot
    the new token is written to. Returns (out [B, 1, N, H] bf16, keys, values) with slot ``end`` filled.
    ``build``: as ``native_dot``'s.
    """
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    cache = jax.ShapeDtypeStruct(keys.shape, keys.dtype)
    call = jax.ffi.ffi_call(_target("reclm_decode_attention", build), (out, cache, cache),
                            input_output_aliases={3: 1, 4: 2}, vmap_method="sequential")
    return call(q, k_new, v_new, keys, values, mask, jnp.asarray(end, jnp.int32), scale=np.float32(scale))
