"""Teacher fixtures: a deterministic-successor dataset, a tiny trained teacher, a live local service."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.datasets.raw import write_raw


def write_cycle_dataset(out_dir, n_items: int = 200, n_users: int = 300, seed: int = 0):
    """Every item has one fixed successor (a random cyclic order); users walk that cycle from random starts.

    Items "1".."n" in two categories: "Odd" and "Even" by id parity. Returns (folder, successor dict).
    """
    rng = np.random.default_rng(seed)
    items = [str(i + 1) for i in range(n_items)]
    order = [items[j] for j in rng.permutation(n_items)]
    succ = {order[j]: order[(j + 1) % n_items] for j in range(n_items)}
    sequential = {}
    for u in range(n_users):
        cur = order[int(rng.integers(n_items))]
        seq = [cur]
        for _ in range(int(rng.integers(8, 15)) - 1):
            cur = succ[cur]
            seq.append(cur)
        sequential[f"u{u + 1}"] = seq
    category = {"Odd": [i for i in items if int(i) % 2], "Even": [i for i in items if not int(i) % 2]}
    meta = {i: {"title": f"Item {i} (2000)"} for i in items}
    return write_raw(out_dir, category, meta, sequential), succ


@pytest.fixture(scope="session")
def cycle_dataset(tmp_path_factory):
    return write_cycle_dataset(tmp_path_factory.mktemp("cycle_dataset"))


@pytest.fixture(scope="session")
def service(teacher):
    """A live service on a free localhost port (thread), sharing the in-process teacher."""
    from reclm_jax.service.server import BackgroundServer
    from reclm_jax.teacher.serve import ServeConfig, create_app

    with BackgroundServer(create_app(teacher, ServeConfig(max_batch=256, max_wait_ms=5.0))) as server:
        yield server
