"""Runtimes from outside berth's package, registered through its public registry (``berth.register_runtime``)."""
