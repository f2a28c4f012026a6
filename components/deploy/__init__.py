"""The deploy step: serve a registry version by canary, promote or rollback (local or KServe)."""
