"""The ``reclm_constraint`` request key: which list constraint a request decodes under (docs/serving.md). Its
forms are read by ``decoding.spec.constraint_from_spec`` (shared with the vLLM plugin); here its mistakes
become 400s naming the key, and the server must have been started with ``--constrain-data``.
"""

from __future__ import annotations

from typing import Any

from reclm_jax.decoding.spec import KEY
from reclm_jax.errors import UserError
from reclm_jax.service.http import BadRequest


def parse_constraint(body: dict, catalogue) -> Any:
    """The request's ``ListConstraint`` or None; ``catalogue``: the server's ``ConstrainedCatalogue`` or None."""
    spec = body.get(KEY)
    if spec is None or spec is False:
        return None
    if catalogue is None:
        raise BadRequest(f"'{KEY}' needs a server started with --constrain-data (this one has no catalogue)",
                         param=KEY)
    from reclm_jax.decoding.spec import constraint_from_spec

    try:
        c = constraint_from_spec(spec)
        catalogue.row_data([c])  # unknown categories and the like fail here, not in the decode
    except UserError as e:
        raise BadRequest(str(e) if str(e).startswith(f"'{KEY}") else f"'{KEY}': {e}", param=KEY) from None
    except (TypeError, ValueError) as e:
        raise BadRequest(f"'{KEY}': {e}", param=KEY) from None
    return c
