"""``--smoke``: a bench script's real code path, end to end, on tiny sizes.

``tests/bench/test_bench_smoke.py`` runs every script so in ``make test``: a script that no
longer runs (an API it calls moved, a typo in a report line) fails the suite the day it
breaks, not the day someone next measures. Smoke figures mean nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["parse_args"]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               **tiny: object) -> argparse.Namespace:
    """``parser``'s arguments with ``--smoke`` added; with it, ``tiny`` are the defaults
    (an option given on the command line still wins)."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds: checks the script runs (make test)")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**tiny)
        args = parser.parse_args(argv)
    return args
