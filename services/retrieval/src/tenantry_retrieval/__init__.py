"""Retrieval: embeddings, per-tenant vector namespaces, ingestion and the semantic cache."""
