"""The simulated vLLM engine's parts; ``python -m gpumgr.sim.vllm`` (``gpumgr.sim.vllm``) runs it.

``args`` parses ``vllm serve``'s command line, ``memory`` is the engine's memory arithmetic and
vLLM's messages (pure), ``http`` a minimal asyncio HTTP/1.1 server, ``api`` the OpenAI-compatible
routes. Only the standard library, psutil and gpumgr's pure modules are imported, so that an
engine starts in a fraction of a second: tests start many.
"""
