"""Runnable examples of assocmem (also reachable as `assocmem demo NAME`)."""
