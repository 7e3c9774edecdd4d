"""What the kernel says: cgroup files, mount tables and ``/proc``, on cgroup v1 and v2.

Readers of host state that several layers need (the runtimes for memory and OOM counts, the
audit for what a worker really got). Imports only the standard library and ``berth._exceptions``.
"""
