"""storefleet: a control plane that gives every store its own isolated backend and database."""

__version__ = "0.1.0"
