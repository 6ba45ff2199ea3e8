"""Logs at rest: the key id of each encrypted input (``predictions.enc_key``, ``feedback_images.enc_key``; NULL:
stored in clear, as every row logged before) and the record of purges (``log_purges``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode (env.py: render_as_batch): plain ALTER TABLE where it suffices, table copy on SQLite otherwise
    for table in ("predictions", "feedback_images"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("enc_key", sa.String(16), nullable=True))
    op.create_table(
        "log_purges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("predictions", sa.Integer(), nullable=False),
        sa.Column("feedback", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("log_purges")
    for table in ("feedback_images", "predictions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("enc_key")
