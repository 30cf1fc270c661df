-- Runs once, when the compose Postgres volume is created: one database per owning service
-- (docs/services.md). Each service's migrations create its tables.
CREATE DATABASE tenantry_auth;
CREATE DATABASE tenantry_metering;
CREATE DATABASE tenantry_audit;
