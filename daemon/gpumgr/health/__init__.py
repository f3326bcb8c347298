"""Health: scheduled probes (``scheduler``) and the pure backend state machine (``machine``)."""
