"""The per-host agent: OpenFlow controller, reconciler, CNI server."""
