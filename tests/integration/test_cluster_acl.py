"""Per-node identities and ACLs on a real ensemble: every forbidden read and write is tried.

A node reads only its own assignment document and writes only its own state and registration,
within a quota; the coordinator alone writes assignments; an anonymous client is refused by the
ensemble; ``--lock-ensemble`` closes ZooKeeper's own top to made-up identities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, QuotaExceededError
from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from berth._cli import main
from berth._cluster.admin import add_node, init_cluster, remove_cluster
from berth._cluster.documents import encode_assignment
from berth._cluster.layout import Credential, ZkLayout, new_credential, node_user, read_credential
from berth._cluster.quota import NODE_BYTES, OPEN_TOPS, quotas_enforced
from berth._cluster.zk import Connection
from berth._exceptions import ClusterError

from ._cluster import SESSION_S, Ensemble, login

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


class Setup:
    def __init__(self, ensemble: Ensemble) -> None:
        import uuid

        self.hosts = ensemble.hosts
        self.layout = ZkLayout("/acl" + uuid.uuid4().hex[:8])
        self.co = new_credential("berth-coordinator")
        self.admin = Connection(self.hosts, self.co, SESSION_S, 0.5)
        self.admin.start_and_wait(30)
        init_cluster(self.admin, self.layout, self.co)
        self.creds = {}
        for n in ("n1", "n2"):
            self.creds[n] = new_credential(node_user(n))
            add_node(self.admin, self.layout, self.co, n, self.creds[n].digest_id)
        self.conns: list[Connection] = []

    def as_node(self, n: str, password: str | None = None) -> Connection:
        cred = self.creds[n]
        conn = login(self.hosts, cred.user, password or cred.password)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            c.close()
        remove_cluster(self.admin, self.layout)
        self.admin.close()


@pytest.fixture
def acl(zookeeper: Ensemble) -> Iterator[Setup]:
    s = Setup(zookeeper)
    yield s
    s.close()


def refused(op: Callable[[], Any]) -> None:
    with pytest.raises(NoAuthError):
        op()


def test_a_node_reads_its_own_document_and_nothing_else(acl: Setup) -> None:
    L, a = acl.layout, acl.as_node("n1").client
    data, _ = a.get(L.assignment("n1"))
    assert b'"node":"n1"' in data
    refused(lambda: a.get(L.assignment("n2")))
    refused(lambda: a.get(L.state("n2")))
    refused(lambda: a.get(L.node("n2")))
    refused(lambda: a.get_children(L.nodes))
    refused(lambda: a.get_children(L.assignments))
    refused(lambda: a.get(L.root))
    refused(lambda: a.get(L.schedule))


def test_a_node_writes_only_its_own_state_and_registration(acl: Setup) -> None:
    L, a = acl.layout, acl.as_node("n1").client
    a.set(L.state("n1"), b"{}")
    a.create(L.live("n1"), b"{}", ephemeral=True, acl=[make_digest_acl("node-n1", acl.creds["n1"].password, all=True)])
    refused(lambda: a.set(L.assignment("n1"), encode_assignment("n1", [{"worker_id": "evil"}])))
    refused(lambda: a.delete(L.assignment("n1")))
    refused(lambda: a.set(L.state("n2"), b"{}"))
    refused(lambda: a.create(L.live("n2"), b"{}", ephemeral=True))
    refused(lambda: a.create(L.assignment("n3"), b"{}"))
    refused(lambda: a.create(L.node("n3"), b"{}"))
    refused(lambda: a.create(f"{L.schedule}/topologies", b"{}"))
    refused(lambda: a.delete(L.state("n2")))
    refused(lambda: a.set_acls(L.state("n1"), [make_digest_acl("node-n1", "x", all=True)]))
    refused(lambda: a.set_acls(L.assignment("n1"), [make_digest_acl("node-n1", "x", all=True)]))


def test_a_wrong_password_is_another_identity_and_gets_nothing(acl: Setup) -> None:
    L, a = acl.layout, acl.as_node("n1", password="not-the-password-at-all").client
    refused(lambda: a.get(L.assignment("n1")))
    refused(lambda: a.set(L.state("n1"), b"{}"))
    refused(lambda: a.create(L.live("n1"), b"{}", ephemeral=True))


def test_the_coordinator_alone_writes_assignments(acl: Setup) -> None:
    L = acl.layout
    acl.admin.client.set(L.assignment("n1"), encode_assignment("n1", []))
    b = acl.as_node("n2").client
    refused(lambda: b.set(L.assignment("n1"), encode_assignment("n1", [])))
    refused(lambda: b.set(L.assignment("n2"), encode_assignment("n2", [])))


def test_an_anonymous_client_is_refused_by_the_ensemble(acl: Setup) -> None:
    anon = KazooClient(hosts=acl.hosts, timeout=SESSION_S)
    anon.start(timeout=30)
    try:
        with pytest.raises(Exception) as e:
            anon.get(acl.layout.assignment("n1"))
        assert not isinstance(e.value, AssertionError)
        assert type(e.value).__name__ in ("SessionClosedRequireSaslError", "AuthFailedError", "NoAuthError",
                                          "ConnectionLoss", "SessionExpiredError"), repr(e.value)
    finally:
        anon.stop()
        anon.close()


def test_init_refuses_a_tree_owned_by_someone_else_and_enrolment_is_whole(acl: Setup, tmp_path: Path) -> None:
    other = Credential("berth-coordinator", "another-password-entirely")
    conn = login(acl.hosts, other.user, other.password)
    try:
        with pytest.raises(ClusterError, match="belongs to someone else"):
            init_cluster(conn, acl.layout, other)
        with pytest.raises(ClusterError):
            add_node(conn, acl.layout, other, "n3", new_credential(node_user("n3")).digest_id)
    finally:
        conn.close()
    with pytest.raises(ClusterError, match="enrolled already"):
        add_node(acl.admin, acl.layout, acl.co, "n1", acl.creds["n1"].digest_id)
    with pytest.raises(ClusterError, match="must be 'node-n3'"):
        add_node(acl.admin, acl.layout, acl.co, "n3", acl.creds["n1"].digest_id)
    assert acl.admin.client.exists(acl.layout.node("n3")) is None


def test_a_node_cannot_grow_its_directory_past_its_own_znodes(acl: Setup) -> None:
    """CREATE on nodes/<node> (for its ephemeral registration) cannot name the child: a quota
    bounds the directory to the registration and the state, and their largest sizes."""
    L, a = acl.layout, acl.as_node("n1").client
    assert quotas_enforced(acl.admin, L, acl.co), \
        "the ensemble does not enforce quotas: restart it so that enforceQuota=true applies (scripts/zookeeper)"
    a.create(L.live("n1"), b"{}", ephemeral=True)  # what the agent makes
    with pytest.raises(QuotaExceededError):
        a.create(f"{L.node('n1')}/junk", b"")
    with pytest.raises(QuotaExceededError):
        a.set(L.state("n1"), b"x" * NODE_BYTES)
    a.delete(L.live("n1"))
    a.create(f"{L.node('n1')}/junk", b"", acl=[make_acl("auth", "", all=True)])  # instead of its registration
    with pytest.raises(QuotaExceededError):
        a.create(f"{L.node('n1')}/junk/deeper", b"")
    acl.as_node("n2").client.create(L.live("n2"), b"{}", ephemeral=True)  # each node has its own bound


def test_lock_ensemble_closes_zookeepers_own_top_to_made_up_identities(private_zookeeper: Ensemble,
                                                                       tmp_path: Path) -> None:
    import uuid

    hosts, root = private_zookeeper.hosts, "/lock" + uuid.uuid4().hex[:8]
    auth = tmp_path / "co.auth"
    stranger = login(hosts, "made-up", "a-password-nobody-gave-out")
    admin: Connection | None = None
    try:
        r = CliRunner().invoke(main, ["cluster", "init", "--zk", hosts, "--auth", str(auth), "--root", root])
        assert r.exit_code == 0, r.output
        assert "quotas: enforced" in r.output and "--lock-ensemble" in r.output
        stranger.client.create("/made-up-junk", b"")  # open until locked
        stranger.client.delete("/made-up-junk")
        r = CliRunner().invoke(main, ["cluster", "init", "--zk", hosts, "--auth", str(auth), "--root", root,
                                      "--lock-ensemble"])
        assert r.exit_code == 0, r.output
        assert "locked /, /zookeeper, /zookeeper/quota" in r.output
        for path in ("/made-up-junk", "/zookeeper/made-up-junk", "/zookeeper/quota/made-up-junk"):
            refused(lambda p=path: stranger.client.create(p, b""))  # type: ignore[misc]
        assert root.lstrip("/") in stranger.client.get_children("/")  # everyone may still read
    finally:
        stranger.close()
        if auth.exists():
            admin = Connection(hosts, read_credential(str(auth)), SESSION_S, 0.5)
            admin.start_and_wait(30)
            for path in OPEN_TOPS:  # the private ensemble is shared by the other fault tests
                admin.client.set_acls(path, OPEN_ACL_UNSAFE)
            remove_cluster(admin, ZkLayout(root))
            admin.close()


def test_remove_node_deletes_nothing_when_it_cannot_delete_everything(acl: Setup) -> None:
    """A znode the node's identity gave children under its own ACL: named, and nothing removed
    (the removal is one transaction, checked first by one made to fail)."""
    from berth._cluster.admin import remove_node
    from berth._cluster.quota import quota_dir

    L, a = acl.layout, acl.as_node("n1").client
    quota = quota_dir(L.node("n1"))
    for path in (f"{quota}/zookeeper_stats", f"{quota}/zookeeper_limits", quota):  # an ensemble without quotas
        acl.admin.client.delete(path)
    a.create(f"{L.node('n1')}/junk", b"", acl=[make_acl("auth", "", all=True)])
    a.create(f"{L.node('n1')}/junk/deeper", b"")
    with pytest.raises(ClusterError, match=r"cannot remove .*/n1/junk: the node's identity gave it children"):
        remove_node(acl.admin, L, "n1")
    for path in (L.node("n1"), L.state("n1"), L.assignment("n1"), f"{L.node('n1')}/junk"):
        assert acl.admin.client.exists(path) is not None, path
    a.delete(f"{L.node('n1')}/junk/deeper")
    remove_node(acl.admin, L, "n1")  # a leaf under the node's own ACL is deleted unread
    assert acl.admin.client.exists(L.node("n1")) is None and acl.admin.client.exists(L.assignment("n1")) is None
