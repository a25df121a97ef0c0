"""``python -m reclm_jax.eval.score``: scores the outputs of any system on dumped test samples.

    python -m reclm_jax.eval --dump_samples samples.jsonl --data_path DIR --item_index title64_t --tokenizer TOK
    ... (any system writes outputs.jsonl: one {"index": int, "output_text": str | null} per sample) ...
    python -m reclm_jax.eval.score --data_path DIR --item_index title64_t --tokenizer TOK \\
        --samples samples.jsonl --outputs outputs.jsonl [--json scores.json] [--output_dir RUN --name NAME]

Prints the per-task table in both countings (``eval.scorer``); ``--json`` writes
``{"reclm": {task: {metric: value}}, "original": {...}, "counts": {task: {...}}}`` (values sum / Count, as the
original prints them); ``--output_dir`` also writes an evaluated run folder (``eval.run_dir``) that the report
reads. A sample without an output line is a failed request. General-LLM answers are parsed with the
general-LLM parser when the samples were dumped with ``--general_llm`` (or with ``--general_llm`` here).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from reclm_jax.atomic import write_json_atomic
from reclm_jax.cli import run_main
from reclm_jax.data.item_index import load_dataset
from reclm_jax.errors import UserError
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.scorer import Scorer, format_table
from reclm_jax.jsonl import iter_json_lines


def read_jsonl(path: str | Path, what: str, required: Sequence[str]) -> list[dict]:
    """Every line of a JSON-lines file as a dict; ``UserError`` naming ``FILE:LINE`` for a bad line, a missing
    key or an ``index`` that is not an integer or repeats."""
    rows, seen = [], set()
    for n, row in iter_json_lines(path, f"{what} file {path} does not exist"):
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{n}: missing {', '.join(missing)}")
        index = row["index"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise UserError(f"{path}:{n}: index must be an integer, got {index!r}")
        if index in seen:
            raise UserError(f"{path}:{n}: index {index} appears twice")
        seen.add(index)
        rows.append(row)
    return rows


def read_outputs_file(path: str | Path) -> dict[int, tuple[str | None, str | None]]:
    """index -> (output_text or None, error or None) of an outputs file."""
    out = {}
    for row in read_jsonl(path, "outputs", ("index", "output_text")):
        text = row["output_text"]
        if text is not None and not isinstance(text, str):
            raise UserError(f"{path}: output_text of index {row['index']} must be a string or null")
        out[row["index"]] = (text, row.get("error"))
    return out


def score_files(samples: Sequence[dict], outputs: dict[int, tuple[str | None, str | None]], index, category2item,
                general_llm: bool, idx: bool = True) -> tuple[Scorer, dict[str, list[dict]]]:
    """Scores ``samples`` (dump lines) with ``outputs``; returns the scorer and the output rows per task."""
    unknown = sorted(set(outputs) - {s["index"] for s in samples})
    if unknown:
        raise UserError(f"outputs name indexes that no sample has, e.g. {unknown[:5]}")
    tasks = list(dict.fromkeys(s["task"] for s in samples))
    scorer = Scorer(tasks, index, category2item, general_llm=general_llm, idx=idx)
    rows: dict[str, list[dict]] = {t: [] for t in tasks}
    for s in samples:
        text, error = outputs.get(s["index"], (None, "no output"))
        if text is None and error is None:
            error = "no output"
        rows[s["task"]].append(scorer.add({**s, "input_text": s.get("input_text", "")}, text, error))
    return scorer, rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.eval.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_path", required=True, help="raw dataset folder (the four pickles)")
    p.add_argument("--item_index", default="title64_t", help="the item index the samples were made with")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer folder (computed item indexes: title64_t)")
    p.add_argument("--samples", required=True, help="samples.jsonl from python -m reclm_jax.eval --dump_samples")
    p.add_argument("--outputs", required=True, help="outputs.jsonl: one {index, output_text} per sample")
    p.add_argument("--general_llm", action="store_true", help="parse as general-LLM answers (default: as dumped)")
    p.add_argument("--no_idx", action="store_true", help="outputs are not numbered (the original without --idx)")
    p.add_argument("--json", default=None, help="write the scores here")
    p.add_argument("--output_dir", default=None, help="also write an evaluated run folder here")
    p.add_argument("--name", default=None, help="the run's name in the report (default: the folder's name)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    samples = read_jsonl(a.samples, "samples", ("index", "task", "input_field_data"))
    if not samples:
        raise UserError(f"{a.samples} holds no sample")
    for s in samples:
        for key in ("item_count", "target_item_title"):
            if key not in s["input_field_data"]:
                raise UserError(f"{a.samples}: sample {s['index']}'s input_field_data lacks {key!r}")
    outputs = read_outputs_file(a.outputs)
    tokenizer = None
    if a.tokenizer:
        from reclm_jax.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer, key="--tokenizer")
    raw, index = load_dataset(a.data_path, a.item_index, tokenizer)
    general = a.general_llm or any(s.get("general_llm") for s in samples)
    scorer, rows = score_files(samples, outputs, index, raw.category2item, general, idx=not a.no_idx)
    scores = scorer.scores()
    print(format_table(scores), end="")
    if a.json:
        write_json_atomic(a.json, scores)
    if a.output_dir:
        write_run(a.output_dir, a.name or Path(a.output_dir).name, "general_llm" if general else "model",
                  a.data_path, a.item_index, scores, rows)
    return 0


def write_run(path: str | Path, name: str, kind: str, data_path: str, item_index: str, scores: dict,
              rows: dict[str, list[dict]], max_users: int | None = None, base_url: str | None = None,
              **extra: Any) -> None:
    """Writes a whole evaluated run folder at once (outputs, scores, then ``run.json`` complete)."""
    for task, task_rows in rows.items():
        rd.write_outputs(path, task, task_rows)
    rd.write_scores(path, scores)
    rd.write_info(path, rd.make_info(name, kind, base_url, data_path, item_index, list(rows), max_users,
                                     complete=True, **extra))


if __name__ == "__main__":
    run_main(main)
