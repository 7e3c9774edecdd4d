"""The node: berth's ``ResourceIsolationInterface`` over one runtime.

Launch, kill, watch and report one node's workers; make and remove their directories in one
place; journal reported exits; audit a running worker from the host. Imports the runtimes,
the core, ``berth._linux`` and ``berth._exceptions``; never the service, cluster or CLI.
"""
