"""The pure core: a request and the node's config become one validated, immutable plan.

spec, config (berth.toml and Storm's storm.yaml), identity, layout, the worker script, the plan
and its renderers (Storm's ``docker run`` line, the Engine API body, the OCI config, text). No
container is touched here; the only I/O is reading config files, the user database and host
facts. Imports ``berth._exceptions`` and ``berth._linux``, never a runtime, the node or above.
"""
