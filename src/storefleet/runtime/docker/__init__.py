"""The Docker runtime: each store a Compose project (backend + PostgreSQL) on its own network.

`driver.py` is the driver; `template.py` renders and checks the store stack's Compose file
(`templates/store-stack.yaml` is the built-in one).
"""
