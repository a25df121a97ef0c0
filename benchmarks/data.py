"""Sample-building throughput: one full SFT epoch of the train tasks on ML-1M with the in-process teacher, then
the same samples through the HTTP teacher service, batched and one request per sample (as the original).

    python benchmarks/data.py --data_path /tmp/ml-1m [--teacher_checkpoint runs/teacher_ml1m] [--http_samples 2000]

Without ``--teacher_checkpoint`` an untrained SASRec of the paper's shape (d=128, 2 layers) stands in: speed
does not depend on the weights. Prints one JSON object with samples/s per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from reclm_jax.data.samples import SampleBuilder  # noqa: E402
from reclm_jax.data.task_setup import build_task_context  # noqa: E402
from reclm_jax.data.tasks import TaskSettings  # noqa: E402

TASKS = "SFTSeqRec,SFTSeqRecPALR,SFTPersonalControlRec,SFTControlRec,SFTControlRec_re,SFTPersonalCategoryRate," \
        "SFTCategoryRate"


def make_teacher(raw, checkpoint: str | None, data_path: str):
    from reclm_jax.teacher.teacher import Teacher

    if checkpoint:
        return Teacher.from_checkpoint(checkpoint, data_path, dataset=raw), "trained"
    from flax import nnx

    from reclm_jax.teacher.config import SASRecConfig
    from reclm_jax.teacher.sasrec import SASRec

    model = SASRec(len(raw.items), SASRecConfig(), nnx.Rngs(0))
    model.eval()
    return Teacher(model, raw.items, raw.category2item, users=raw.users), "untrained (paper shape)"


class PerSampleTeacher:
    """Sends one HTTP request per history, as the original's dataset did."""

    def __init__(self, client):
        self.client = client

    def topk(self, histories, k, target_categories=None, candidates=None):
        out = []
        for b, h in enumerate(histories):
            cat = None if target_categories is None else [target_categories[b]]
            out += self.client.topk([h], k, cat)
        return out


def timed(builder: SampleBuilder, indices, chunk: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = []
    for start in range(0, len(indices), chunk):
        out += builder.build(indices[start:start + chunk], epoch=0)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_path", default="/tmp/ml-1m")
    p.add_argument("--teacher_checkpoint", default=None)
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--http_samples", type=int, default=2000, help="samples built one request per sample")
    a = p.parse_args()

    ctx, _ = build_task_context(a.data_path, "title", None, "llama-2", TaskSettings())
    raw = ctx.raw
    teacher, kind = make_teacher(raw, a.teacher_checkpoint, a.data_path)
    teacher.warmup(a.chunk * 2, ks=(10, 12))
    tasks = a.tasks.split(",")
    builder = SampleBuilder(ctx, tasks, "train", teacher, seed=0)
    n = len(builder)
    indices = list(range(n))
    timed(builder, indices[:a.chunk], a.chunk)  # warm caches / compile remaining shapes
    secs, local = timed(builder, indices, a.chunk)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (this CPU)",
              "dataset": a.data_path, "users": len(raw.users), "items": len(raw.items), "teacher": kind,
              "tasks": tasks, "epoch_samples": n, "in_process": {"seconds": round(secs, 2),
                                                                 "samples_per_s": round(n / secs, 1),
                                                                 "teacher_calls": builder.teacher_calls}}

    from reclm_jax.teacher.client import TeacherClient
    from reclm_jax.service.server import BackgroundServer
    from reclm_jax.teacher.serve import ServeConfig, create_app

    with BackgroundServer(create_app(teacher, ServeConfig(max_batch=1024, max_wait_ms=2.0))) as server:
        client = TeacherClient(port=server.port, batch_size=1024)
        batched = SampleBuilder(ctx, tasks, "train", client, seed=0)
        secs_b, remote = timed(batched, indices, a.chunk)
        assert remote == local, "HTTP labels differ from in-process labels"
        result["http_batched"] = {"seconds": round(secs_b, 2), "samples_per_s": round(n / secs_b, 1)}
        per = SampleBuilder(ctx, tasks, "train", PerSampleTeacher(client), seed=0)
        sub = indices[:: max(1, n // a.http_samples)][:a.http_samples]
        secs_p, remote_p = timed(per, sub, a.chunk)
        assert remote_p == [local[i] for i in sub], "per-request HTTP labels differ"
        result["http_one_request_per_sample"] = {"samples": len(sub), "seconds": round(secs_p, 2),
                                                 "samples_per_s": round(len(sub) / secs_p, 1)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
