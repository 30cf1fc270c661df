"""Tenantry audit: the append-only, tamper-evident audit log, its exports and retention."""
