"""Storm's ZooKeeper chroot on an ensemble whose top is locked (``berth cluster init --lock-ensemble``).

Storm's identity makes ``/berth-storm`` itself where ZooKeeper's top is open; once the top is
given to berth's coordinator, only an identity that may create there can make it, once, for
Storm (``BERTH_STORM_ZK_ADMIN_AUTH``). On the private ensemble: the locking is undone at the end.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from kazoo.exceptions import NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE

from bench._storm import StormCluster
from berth._cli import main
from berth._cluster.admin import remove_cluster
from berth._cluster.layout import ZkLayout, read_credential
from berth._cluster.quota import OPEN_TOPS
from berth._cluster.zk import Connection

from ._cluster import SESSION_S, Ensemble, login

pytestmark = [pytest.mark.integration, pytest.mark.storm, pytest.mark.cluster]

STORM_AUTH = Path("/var/lib/berth-dev/storm/zk.auth")


def _storm_login(hosts: str) -> Connection:
    user, password = STORM_AUTH.read_text().strip().split(":", 1)
    return login(hosts, user, password)


def test_a_locked_top_needs_an_admin_once_then_storm_makes_its_chroots(private_zookeeper: Ensemble,
                                                                      tmp_path: Path) -> None:
    hosts, root = private_zookeeper.hosts, "/lock" + uuid.uuid4().hex[:8]
    auth = tmp_path / "co.auth"
    storm = StormCluster(env={"BERTH_STORM_ZK": hosts})
    storm.run("install")
    s = _storm_login(hosts)
    with contextlib.suppress(NoNodeError):
        s.client.delete("/berth-storm", recursive=True)  # a fresh ensemble's state: no chroot yet
    try:
        r = CliRunner().invoke(main, ["cluster", "init", "--zk", hosts, "--auth", str(auth), "--root", root,
                                      "--lock-ensemble"])
        assert r.exit_code == 0, r.output
        refused = storm.run("zk-prepare", check=False)
        assert refused.returncode == 1
        assert "BERTH_STORM_ZK_ADMIN_AUTH" in refused.stderr and "berth-storm" in refused.stderr
        assert not s.client.exists("/berth-storm")

        storm.env["BERTH_STORM_ZK_ADMIN_AUTH"] = str(auth)
        storm.run("zk-prepare")
        assert s.client.exists(f"/berth-storm/{storm.instance}")
        del storm.env["BERTH_STORM_ZK_ADMIN_AUTH"]
        other = StormCluster(env={"BERTH_STORM_ZK": hosts})
        other.run("zk-prepare")  # from now on Storm's identity alone makes each instance's chroot
        assert s.client.exists(f"/berth-storm/{other.instance}")
    finally:
        if auth.exists():
            admin = Connection(hosts, read_credential(str(auth)), SESSION_S, 0.5)
            admin.start_and_wait(30)
            try:
                for path in OPEN_TOPS:  # first: the private ensemble is shared by the other fault tests
                    admin.client.set_acls(path, OPEN_ACL_UNSAFE)
                with contextlib.suppress(NoNodeError):  # Storm's chroots, then /berth-storm (open top again)
                    s.client.delete("/berth-storm", recursive=True)
                remove_cluster(admin, ZkLayout(root))
            finally:
                admin.close()
        s.close()
