"""vLLM's own tables, one generated module per release, and what gpumgr keys on the release.

A leaf package: it imports nothing of gpumgr outside itself, so ``gpumgr.config`` (validate),
``gpumgr.engines`` (the command line) and ``gpumgr.sim`` (the simulated engine) all read the same
tables without importing each other. ``releases`` maps a ``vllm --version`` string to the known
release whose table applies and to the behaviour that differs between releases.
"""

from __future__ import annotations
