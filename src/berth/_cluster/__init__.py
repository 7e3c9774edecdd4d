"""Cluster mode: berth agents on many nodes take their assignments from ZooKeeper (kazoo).

The agent is the node's supervisor fed from its assignment znode, the coordinator places workers
on live nodes and writes those znodes, and per-node identities and ACLs keep each node to its own
documents. This layer may import the service layer and everything below it (``_service``,
``_node``, ``_runtimes``, ``_core``, ``_linux``, ``_exceptions``); only the CLI imports it.
"""
