"""``python -m reclm_jax.datasets.validate DIR [--item_index title] [--require_ranking]``.

Checks a dataset folder in the RecLM-gen raw format and prints its summary, or every problem found (one line
each, naming file and key) and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from reclm_jax.cli import run_main
from reclm_jax.datasets.raw import format_summary, load_raw
from reclm_jax.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reclm_jax.datasets.validate",
                                     description="Validate a RecLM-gen raw dataset folder and print its summary.")
    parser.add_argument("data_path", help="folder with category/meta/sequential[/ranking_candidate].pickle")
    parser.add_argument("--item_index", default="title", help="meta field used as the item's text (or 'id')")
    parser.add_argument("--require_ranking", action="store_true",
                        help="treat a missing ranking_candidate.pickle as a problem (needed by *SeqRanking tasks)")
    args = parser.parse_args(argv)
    try:
        ds = load_raw(args.data_path, item_index=args.item_index,
                      require_ranking_candidates=args.require_ranking)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(format_summary(ds.summary()))
    for w in ds.warnings:
        print(f"warning: {w}")
    print("ok")
    return 0


if __name__ == "__main__":
    run_main(main)
