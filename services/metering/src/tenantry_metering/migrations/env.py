"""Alembic environment of metering's database."""

from tenantry_common.db import run_alembic_env
from tenantry_metering.models import metadata

run_alembic_env(metadata)
