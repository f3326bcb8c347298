"""Child processes: spawn, stop, restart policy, logs and adoption after a daemon restart.

The supervisor knows processes, not HTTP: readiness, start order and the GPU lock live in
``gpumgr.actions``.
"""
