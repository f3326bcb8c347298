"""Simulated hardware and remote services: real processes that speak the real protocols.

The daemon's code paths are the shipped ones; only the GPU, the vLLM engine, Ollama and the
Hugging Face hub are stood in for here.
"""

import sys

SIM_ENGINE_COMMAND = [sys.executable, "-m", "gpumgr.sim.vllm"]
"""What stands in for the ``vllm`` executable under simulation (followed by ``serve …``)."""
