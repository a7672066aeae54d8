"""The process runtime: each store's backend as a supervised OS process, SQLite for its data.

`driver.py` is the driver (control-plane side); `supervisor.py` runs beside each store with the
standard library only (`python -m storefleet.runtime.process.supervisor`), so this package's
`__init__` imports nothing.
"""
