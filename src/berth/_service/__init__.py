"""The supervisor service: desired state reconciled with what runs, its HTTP API and metrics.

Imports the node and everything below it; never the cluster agent or the CLI.
"""
