"""Ways of running a plan, behind one small interface (``base.Runtime``), one module each.

A caller (the node) never knows which runtime it has: status, exit records, the request a
worker stands for (``describe``) and declared capabilities are runtime-neutral values.
Imports ``berth._core``, ``berth._linux`` and ``berth._exceptions``; never the node or above.
"""
