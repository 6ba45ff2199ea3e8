"""API keys may expire: ``api_keys.expires_at`` (NULL: the key never expires, as every existing key).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # batch mode (env.py: render_as_batch): plain ALTER TABLE where it suffices, table copy on SQLite otherwise
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", _TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
