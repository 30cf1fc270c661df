"""Shared code for Tenantry's services: contracts, settings, messaging, stores, telemetry."""
