"""Services: what storefleet does, independent of HTTP. They take typed requests, use the registry
in short transactions, drive the runtime outside them, and return pydantic models."""
