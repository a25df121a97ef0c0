"""The evaluated-run folder: what the evaluation client and the baselines write and the report reads.

    RUN/run.json            {"name", "kind", "base_url", "data_path", "item_index", "tasks", "max_users",
                             "complete", "created"}                              (``RunInfo`` as a dict)
    RUN/scores.json         {"reclm": {task: {metric: value}}, "original": {task: {metric: value}},
                             "counts": {task: {"samples", "failed", "skipped_original"}}}
    RUN/outputs/<task>.jsonl  one JSON object per sample: "index", "task", "input_text", "output_text"
                             (str or null), "error" (str or null), "items" (mapped catalogue titles in order),
                             plus the sample's "target", "category", ... (see ``eval.score``)

``kind`` is ``model`` | ``general_llm`` | ``teacher`` | ``popularity``; metric names are
``eval.metrics``'s; each value is sum / Count as the original prints it. ``complete`` is false while a run is
still filling its outputs (an interrupted client); a report should say so. While the client runs, an outputs
file grows one line per answered request (the cache: a line cut by a kill is ignored when read back); when a
task is done the file is rewritten in sample order with the scored fields.

    run = load_run("runs/eval_sft")
    run.info["name"], run.tasks, run.scores["reclm"]["SFTTestSeqRec"]["NDCG"], run.outputs("SFTTestSeqRec")[0]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from reclm_jax.atomic import open_atomic, write_json_atomic
from reclm_jax.errors import UserError

RUN_KINDS = ("model", "general_llm", "teacher", "popularity")
INFO_FILE = "run.json"
SCORES_FILE = "scores.json"
OUTPUTS_DIR = "outputs"


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """One evaluated run read from disk: ``info`` (run.json), ``scores`` (scores.json; None when not yet
    written) and the per-task outputs, read on demand."""

    path: Path
    info: dict
    scores: dict | None

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def tasks(self) -> list[str]:
        return list(self.info["tasks"])

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    def outputs(self, task: str) -> list[dict]:
        """The task's output lines (dicts), in file order; [] when the task has no outputs file."""
        return read_outputs(self.path, task)


def make_info(name: str, kind: str, base_url: str | None, data_path: str | Path, item_index: str,
              tasks: Sequence[str], max_users: int | None, complete: bool = False,
              created: str | None = None, **extra: Any) -> dict:
    """A ``run.json`` dict (``created`` defaults to now, ISO 8601 with the UTC offset); ``extra`` keys are
    kept (e.g. the model name sent to the server)."""
    if kind not in RUN_KINDS:
        raise ValueError(f"kind must be one of {RUN_KINDS}, got {kind!r}")
    info = {"name": name, "kind": kind, "base_url": base_url, "data_path": str(data_path),
            "item_index": item_index, "tasks": list(tasks), "max_users": max_users, "complete": bool(complete),
            "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    info.update(extra)
    return info


def outputs_path(run_dir: str | Path, task: str) -> Path:
    return Path(run_dir) / OUTPUTS_DIR / f"{task}.jsonl"


def write_info(run_dir: str | Path, info: Mapping[str, Any]) -> Path:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_json_atomic(Path(run_dir) / INFO_FILE, dict(info))


def write_scores(run_dir: str | Path, scores: Mapping[str, Any]) -> Path:
    """Writes ``scores.json`` (``{"reclm", "original", "counts"}``, see the module doc)."""
    for key in ("reclm", "original", "counts"):
        if key not in scores:
            raise ValueError(f"scores lack {key!r}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_json_atomic(Path(run_dir) / SCORES_FILE, dict(scores))


def write_outputs(run_dir: str | Path, task: str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Replaces the task's outputs file with ``rows`` (one JSON object per line), atomically."""
    path = outputs_path(run_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_outputs(run_dir: str | Path, task: str) -> list[dict]:
    """The task's output lines; a last line cut short by a killed writer (no newline, or bad JSON) is
    dropped, so a cache read after SIGKILL holds only whole answers."""
    path = outputs_path(run_dir, task)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # cut by a kill mid-write
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n}: not a JSON line; delete the file to re-query this task") from None
    return rows


class OutputAppender:
    """Appends output lines to a task's file as answers arrive (the resumable cache); each line is flushed
    and fsynced, so a kill loses at most the line being written."""

    def __init__(self, run_dir: str | Path, task: str):
        path = outputs_path(run_dir, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair(path)
        self._f = open(path, "a", encoding="utf-8")

    @staticmethod
    def _repair(path: Path) -> None:
        # A kill mid-line leaves a fragment without a newline: cut it so the next line starts cleanly.
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, row: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "OutputAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_run(path: str | Path) -> EvalRun:
    """Reads an evaluated run folder; ``UserError`` naming the file when run.json is missing or malformed."""
    path = Path(path)
    info_file = path / INFO_FILE
    if not info_file.exists():
        raise UserError(f"{path}: not an evaluated run (no {INFO_FILE}); write one with python -m reclm_jax.eval "
                        f"or python -m reclm_jax.eval.baselines")
    info = _read_json(info_file)
    missing = [k for k in ("name", "kind", "tasks") if k not in info]
    if missing:
        raise UserError(f"{info_file}: missing {', '.join(missing)}")
    scores_file = path / SCORES_FILE
    scores = _read_json(scores_file) if scores_file.exists() else None
    return EvalRun(path, info, scores)


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    return obj
