"""The layering of docs/architecture.md, checked on the source: each package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "reclm_jax"
# Bottom to top; a package may import its own layer and those listed before it.
# ``testing`` (fixtures and servers for the tests) sits on top: it may start any stage.
ORDER = ["foundation", "datasets", "models", "train", "teacher", "data", "decoding", "eval", "stages", "testing"]
LAYER = {"datasets": "datasets", "models": "models", "train": "train", "teacher": "teacher", "data": "data",
         "decoding": "decoding", "eval": "eval", "testing": "testing", "sft": "stages", "rl": "stages", "generate": "stages",
         "export": "stages", "serve": "stages", "service": "foundation"}
STAGES = {"sft", "rl", "generate", "export", "serve"}
# Documented exception: a Sampler given weights on a mesh without a Runtime builds one (lazily, in a function).
ALLOWED = {("models/sampler.py", "train")}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "reclm_jax" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {t for t in map(_top, names) if t}


def _layer(top: str) -> str:
    return LAYER.get(top, "foundation")


def test_every_package_imports_only_layers_below_it():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        own_top = rel.split("/")[0].removesuffix(".py")
        own = _layer(own_top)
        for top in _imports(path):
            target = _layer(top)
            if (rel, top) in ALLOWED:
                continue
            if ORDER.index(target) > ORDER.index(own):
                bad.append(f"{rel} ({own}) imports reclm_jax.{top} ({target})")
            elif own == "stages" and top in STAGES and top != own_top:
                bad.append(f"{rel}: stage {own_top} imports stage {top}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    # The rule above must be able to fail: a teacher module importing the task layer is one.
    f = tmp_path / "t.py"
    f.write_text("from reclm_jax.data.samples import SampleBuilder\nimport reclm_jax.models.llama\n")
    tops = _imports(f)
    assert tops == {"data", "models"}
    assert ORDER.index(_layer("data")) > ORDER.index(_layer("teacher"))
