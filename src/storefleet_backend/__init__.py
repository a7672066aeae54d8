"""Reference store backend: what storefleet deploys for a store until an operator brings their own.

It stands in for the smart-pay gateway: a small orders API on the HTTP port, order events pushed
over a websocket on the websocket port, persisted in the store's own database (SQLite or
PostgreSQL). It knows nothing of the control plane.
"""

__version__ = "0.1.0"
