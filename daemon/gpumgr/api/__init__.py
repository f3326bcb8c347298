"""The HTTP side of the daemon: the read-only status app (TCP) and, later, the control app
(unix socket). Each app is built by its own factory; ``gpumgr.api.server`` runs any of them
inside the daemon's event loop."""
