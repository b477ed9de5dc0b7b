"""Alembic environment for tmws (`alembic upgrade head` or `tmws db upgrade`).

The work is in tmws.database._migrate so both entry points share it: the pgvector check,
the advisory lock that serialises concurrent upgrades, and the embedded database when
TMWS_DATABASE_URL is unset.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from alembic import context


def _prefer_a_built_tmws() -> None:
    """`python -m alembic` puts the working directory first on sys.path, so from a source
    checkout `import tmws` finds the checkout's sources, which have no compiled core unless
    it was built in place (an editable install): with tmws installed from a wheel,
    `python -m alembic upgrade head` from the repository root (deploy/README.md, Step 4)
    would fail. Such a
    source tree is taken off the path, so that the installed tmws is imported instead."""
    spec = importlib.util.find_spec("tmws")
    if spec is None or spec.origin is None:
        return
    package = Path(spec.origin).parent
    if any((package / f"_tmws_core{suffix}").exists()
           for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        return  # built in place, or the installed package itself
    root = package.parent.resolve()
    kept = [entry for entry in sys.path if Path(entry or ".").resolve() != root]
    if len(kept) != len(sys.path):
        sys.path[:] = kept
        importlib.invalidate_caches()


_prefer_a_built_tmws()

from tmws.database._migrate import run_alembic_environment  # noqa: E402

run_alembic_environment(context)
