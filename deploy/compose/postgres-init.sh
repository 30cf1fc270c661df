#!/bin/sh
# Runs once, when the compose Postgres volume is created (docker-entrypoint-initdb.d).
# One database per owning service (docs/services.md); each service migrates its own at start.
# Audit's writer role is created here with a password so that it can log in over the network;
# audit's migration finds it and grants it INSERT and SELECT only.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v writer_password="$AUDIT_WRITER_PASSWORD" <<'SQL'
CREATE DATABASE tenantry_auth;
CREATE DATABASE tenantry_metering;
CREATE DATABASE tenantry_audit;
CREATE ROLE tenantry_audit_writer LOGIN PASSWORD :'writer_password';
SQL
