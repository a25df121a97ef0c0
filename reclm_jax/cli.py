"""Entry-point plumbing shared by every ``python -m reclm_jax.<stage>`` command."""

from __future__ import annotations

import sys
from typing import Callable

from reclm_jax.compile_cache import enable_compilation_cache
from reclm_jax.errors import UserError


def run_main(main: Callable[[], int | None]) -> None:
    """Runs ``main`` and turns user mistakes into one ``error:`` line on stderr with exit code 2.

    Ctrl-C exits with 130 and a short note instead of a traceback; real bugs keep their traceback.

    Every stage passes through here before its first compile, so this is where JAX's persistent compilation
    cache is turned on (``reclm_jax.compile_cache``; ``RECLM_JAX_COMPILATION_CACHE=0`` turns it off).
    """
    try:
        enable_compilation_cache()
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        raise SystemExit(0) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
