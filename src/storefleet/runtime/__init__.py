"""Runtime drivers: how a store's stack is started, observed and removed."""
