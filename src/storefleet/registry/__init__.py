"""The registry: storefleet's own database of stores, port leases and secrets (SQLAlchemy 2)."""
