"""The Storm adapter: a Storm ``storm.yaml`` read as a node config, and Storm's own view of a launch.

It owns what exists only because Storm exists: the storm.yaml reader and Storm's keys (``yaml``),
Storm's ``docker run`` line as Storm's code spells it (``line``), the notes and refusals
``explain`` shows beside it (``explain``), and which file a node config comes from (``loading``).
The node config's ``[storm]`` table (``_core.stormconf``) stays in ``_core``: the policy follows
it (CPU override, NUMA pins, Storm's memory margin), and the plan is policy.

Why this layer, between ``_runtimes`` and ``_node``: a storm.yaml chooses a runtime
(``storm.resource.isolation.plugin``), so the config it gives is checked against the runtime
registry, and Storm's line is rendered by the docker runtime's line builder (Storm's
``DockerRunCommand`` order); the node, the services and the CLI read it. It imports ``_core``,
``_runtimes`` and below, never ``_node`` or above.
"""
