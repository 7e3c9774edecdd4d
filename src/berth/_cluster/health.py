"""The agent's face to its operator: ``/healthz`` with the ZooKeeper view, ``/cluster``, metrics.

The HTTP API is the supervisor's (``_service.api``); the agent adds its health (degraded while
ZooKeeper is away, not registered, or fenced) and its gauges: ``berth_zk_connected``,
``berth_zk_session_expirations_total``, ``berth_zk_registered``, ``berth_assignment_documents_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._core.config import NodeConfig
from .._service.metrics import Metrics

if TYPE_CHECKING:
    from .agent import Agent


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        h = self.agent.health()
        yield GaugeMetricFamily("berth_zk_connected", "1 while this agent is connected to ZooKeeper.",
                                value=1 if h["zookeeper"] == "connected" else 0)
        yield GaugeMetricFamily("berth_zk_registered", "1 while this node's registration is live.",
                                value=1 if h["registered"] else 0)
        yield GaugeMetricFamily("berth_zk_fenced", "1 while fencing has stopped this node's workers.",
                                value=1 if h["fenced"] else 0)
        yield CounterMetricFamily("berth_zk_session_expirations", "ZooKeeper sessions this agent lost.",
                                  value=h["session_expirations"])
        docs = CounterMetricFamily("berth_assignment_documents", "Assignment documents read, by outcome.",
                                   labels=["outcome"])
        docs.add_metric(["applied"], h["counters"]["documents_applied"])
        docs.add_metric(["rejected"], h["counters"]["documents_rejected"])
        yield docs


def agent_app(agent: Agent, token: str | None) -> Any:
    from .._service.api import create_app

    metrics = Metrics(agent.sup)
    metrics.registry.register(AgentCollector(agent))
    app = create_app(agent.sup, token=token, metrics=metrics, health=agent.health)

    @app.get("/cluster")
    def cluster() -> dict[str, Any]:
        """This node as the cluster sees it: ZooKeeper session, registration, applied document."""
        return {**agent.health(), "state": agent.node_state().model_dump(mode="json")}

    return app


def serve_agent(agent: Agent, socket_path: str, config: NodeConfig) -> None:
    """The API on the node's socket until SIGTERM/SIGINT (the caller then stops the agent)."""
    from .._service.server import serve

    serve(agent.sup, socket_path, None, None, socket_mode=int(config.api.socket_mode, 8),
          socket_group=config.api.socket_group, app=agent_app(agent, None))
