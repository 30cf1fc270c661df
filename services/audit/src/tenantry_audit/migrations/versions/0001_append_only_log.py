"""The append-only audit log, its writer role, and the retention function.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Runs as the owner. Creates the role ``tenantry_audit_writer`` (cluster-wide, so idempotently;
no password here: production sets one out of band) with INSERT and SELECT on the records and
nothing else that could change history. Deleting expired records is possible only through
``audit_apply_retention``, a SECURITY DEFINER function that refuses any cutoff younger than
``audit_policy.min_retention_days``.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

WRITER = "tenantry_audit_writer"

TABLES = """
CREATE TABLE audit_records (
    tenant_id     uuid        NOT NULL,
    sequence      bigint      NOT NULL
                  CONSTRAINT audit_records_sequence_positive CHECK (sequence > 0),
    event_id      uuid        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL,
    audit_type    text        NOT NULL,
    source        text        NOT NULL,
    actor         text,
    resource_type text        NOT NULL,
    resource_id   text        NOT NULL,
    action        text        NOT NULL,
    status        text        NOT NULL,
    error         text,
    ip_address    text,
    user_agent    text,
    details_json  text        NOT NULL,
    content_hash  text        NOT NULL,
    prev_hash     text        NOT NULL,
    hash          text        NOT NULL,
    CONSTRAINT audit_records_pkey PRIMARY KEY (tenant_id, sequence),
    CONSTRAINT audit_records_tenant_event_key UNIQUE (tenant_id, event_id)
);
CREATE INDEX audit_records_tenant_time ON audit_records (tenant_id, occurred_at, sequence);

CREATE TABLE audit_chain_heads (
    tenant_id  uuid        PRIMARY KEY,
    sequence   bigint      NOT NULL,
    hash       text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_chain_heads_updated ON audit_chain_heads (updated_at);

CREATE TABLE audit_retention_checkpoints (
    tenant_id     uuid        PRIMARY KEY,
    sequence      bigint      NOT NULL,
    hash          text        NOT NULL,
    removed_total bigint      NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE audit_retention_tombstones (
    tenant_id    uuid        NOT NULL,
    sequence     bigint      NOT NULL,
    content_hash text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    removed_at   timestamptz NOT NULL,
    CONSTRAINT audit_retention_tombstones_pkey PRIMARY KEY (tenant_id, sequence)
);

CREATE TABLE audit_policy (
    id                 smallint PRIMARY KEY CONSTRAINT audit_policy_single_row CHECK (id = 1),
    min_retention_days integer  NOT NULL CONSTRAINT audit_policy_floor_positive
                                CHECK (min_retention_days >= 1)
);
INSERT INTO audit_policy (id, min_retention_days) VALUES (1, 365);
"""

ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WRITER}') THEN
        CREATE ROLE {WRITER} LOGIN;
    END IF;
EXCEPTION
    -- Another database's migration created it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
"""  # noqa: S608 (a constant role name, no input)

# Runs with the owner's rights, so it is the one narrow door through which rows can go.
RETENTION_FUNCTION = """
CREATE FUNCTION audit_apply_retention(p_tenant uuid, p_cutoff timestamptz)
RETURNS TABLE (removed bigint, checkpoint_sequence bigint, tombstoned bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $fn$
DECLARE
    v_floor_days integer;
    v_head_sequence bigint;
    v_head_hash text;
    v_checkpoint_sequence bigint;
    v_prefix bigint;
    v_prefix_hash text;
    v_removed bigint;
    v_tombstoned bigint;
BEGIN
    SELECT min_retention_days INTO STRICT v_floor_days FROM audit_policy WHERE id = 1;
    IF p_cutoff IS NULL OR p_cutoff > now() - make_interval(days => v_floor_days) THEN
        RAISE EXCEPTION 'retention cutoff % is younger than the floor of % days',
            p_cutoff, v_floor_days USING ERRCODE = 'check_violation';
    END IF;

    -- The head's row lock serialises this with the tenant's appends.
    SELECT h.sequence, h.hash INTO v_head_sequence, v_head_hash
      FROM audit_chain_heads h WHERE h.tenant_id = p_tenant FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint;
        RETURN;
    END IF;
    SELECT c.sequence INTO v_checkpoint_sequence
      FROM audit_retention_checkpoints c WHERE c.tenant_id = p_tenant FOR UPDATE;
    v_checkpoint_sequence := coalesce(v_checkpoint_sequence, 0);

    -- The expired prefix ends just before the first record that has not expired.
    SELECT min(r.sequence) - 1 INTO v_prefix
      FROM audit_records r WHERE r.tenant_id = p_tenant AND r.occurred_at >= p_cutoff;
    v_prefix := coalesce(v_prefix, v_head_sequence);

    -- Expired records behind a younger one leave their position and content hash.
    INSERT INTO audit_retention_tombstones
           (tenant_id, sequence, content_hash, occurred_at, removed_at)
    SELECT r.tenant_id, r.sequence, r.content_hash, r.occurred_at, now()
      FROM audit_records r
     WHERE r.tenant_id = p_tenant AND r.occurred_at < p_cutoff AND r.sequence > v_prefix;
    GET DIAGNOSTICS v_tombstoned = ROW_COUNT;

    IF v_prefix > v_checkpoint_sequence THEN
        -- The hash of the last removed position: the next record's link to it, or the head.
        IF v_prefix = v_head_sequence THEN
            v_prefix_hash := v_head_hash;
        ELSE
            SELECT r.prev_hash INTO STRICT v_prefix_hash
              FROM audit_records r WHERE r.tenant_id = p_tenant AND r.sequence = v_prefix + 1;
        END IF;
        DELETE FROM audit_retention_tombstones t
         WHERE t.tenant_id = p_tenant AND t.sequence <= v_prefix;
    END IF;

    DELETE FROM audit_records r WHERE r.tenant_id = p_tenant AND r.occurred_at < p_cutoff;
    GET DIAGNOSTICS v_removed = ROW_COUNT;

    IF v_prefix > v_checkpoint_sequence THEN
        INSERT INTO audit_retention_checkpoints AS c
               (tenant_id, sequence, hash, removed_total, updated_at)
        VALUES (p_tenant, v_prefix, v_prefix_hash, v_removed, now())
        ON CONFLICT (tenant_id) DO UPDATE
           SET sequence = EXCLUDED.sequence,
               hash = EXCLUDED.hash,
               removed_total = c.removed_total + EXCLUDED.removed_total,
               updated_at = EXCLUDED.updated_at;
    ELSIF v_removed > 0 THEN
        UPDATE audit_retention_checkpoints c
           SET removed_total = c.removed_total + v_removed, updated_at = now()
         WHERE c.tenant_id = p_tenant;
    END IF;

    RETURN QUERY SELECT v_removed, greatest(v_prefix, v_checkpoint_sequence), v_tombstoned;
END
$fn$;
"""

GRANTS = f"""
REVOKE ALL ON audit_records, audit_chain_heads, audit_retention_checkpoints,
              audit_retention_tombstones, audit_policy FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO {WRITER};
GRANT SELECT, INSERT ON audit_records TO {WRITER};
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO {WRITER};
GRANT SELECT ON audit_retention_checkpoints, audit_retention_tombstones, audit_policy TO {WRITER};
REVOKE ALL ON FUNCTION audit_apply_retention(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_apply_retention(uuid, timestamptz) TO {WRITER};
"""  # noqa: S608 (a constant role name, no input)


def _statements(script: str) -> list[str]:
    # asyncpg prepares each statement, so a script goes one statement at a time.
    return [s.strip() for s in script.split(";\n") if s.strip()]


def upgrade() -> None:
    for statement in _statements(TABLES):
        op.execute(statement)
    op.execute(ROLE)
    op.execute(RETENTION_FUNCTION)
    for statement in _statements(GRANTS):
        op.execute(statement)


def downgrade() -> None:
    # The role is cluster-wide (other databases may use it): dropping the objects revokes its
    # rights here, and the role itself stays.
    op.execute("DROP FUNCTION IF EXISTS audit_apply_retention(uuid, timestamptz)")
    op.execute(
        "DROP TABLE IF EXISTS audit_policy, audit_retention_tombstones, "
        "audit_retention_checkpoints, audit_chain_heads, audit_records"
    )
