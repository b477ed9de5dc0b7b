"""Alembic environment for tmws (`alembic upgrade head` or `tmws db upgrade`).

The work is in tmws.database._migrate so both entry points share it: the pgvector check,
the advisory lock that serialises concurrent upgrades, and the embedded database when
TMWS_DATABASE_URL is unset.
"""

from alembic import context

from tmws.database._migrate import run_alembic_environment

run_alembic_environment(context)
