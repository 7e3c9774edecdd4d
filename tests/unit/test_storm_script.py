"""scripts/storm's pure parts, exactly: the ZooKeeper servers Storm is given, the options its
supervisors hand their workers, the ports of an instance. Run in bash, as the script runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "scripts" / "storm-lib.sh"


def bash(code: str, **env: str) -> str:
    sets = "".join(f"{k}={v!r}\n" for k, v in env.items())
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\ndie() {{ echo \"error: $*\" >&2; exit 1; }}\n"
                           f"JAVA_HOME=/nonexistent\n. {LIB}\n{sets}{code}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_ensemble_on_one_host_is_one_entry_whose_join_with_the_port_is_the_connect_string() -> None:
    # CuratorUtils.newCurator joins each server with ":" + port, then ","; ZooKeeper wants h:p1,h:p2,h:p3
    assert bash("zk_yaml", ZK="127.0.0.1:2281,127.0.0.1:2282,127.0.0.1:2283", ZK_ROOT="/berth-storm", NAME="t1") == (
        'storm.zookeeper.servers:\n  - "127.0.0.1:2281,127.0.0.1:2282,127.0.0.1"\n'
        "storm.zookeeper.port: 2283\n"
        'storm.zookeeper.root: "/berth-storm/t1"\n')


def test_servers_that_share_a_port_are_listed_as_storm_expects() -> None:
    assert bash("zk_yaml", ZK="zk1:2181,zk2:2181", ZK_ROOT="/berth-storm", NAME="dev") == (
        'storm.zookeeper.servers:\n  - "zk1"\n  - "zk2"\n'
        "storm.zookeeper.port: 2181\n"
        'storm.zookeeper.root: "/berth-storm/dev"\n')


@pytest.mark.parametrize("zk", ["", "zk1", "zk1:2181,,zk2:2181", "zk1:21a1", "a b:1"])
def test_a_bad_zookeeper_address_is_an_error(zk: str) -> None:
    done = subprocess.run(["bash", "-c", f"die() {{ echo \"error: $*\" >&2; exit 1; }}\nJAVA_HOME=/x\n. {LIB}\n"
                           f"ZK={zk!r} ZK_ROOT=/r NAME=n zk_yaml"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: ")


def test_storm_options_are_url_encoded_and_comma_joined_as_bin_storm_py_does() -> None:
    out = bash('storm_options "storm.local.dir=/var/lib/x y" "supervisor.slots.ports=[6700,6701]" "k=a,b%"')
    assert out == ("storm.local.dir%3D%2Fvar%2Flib%2Fx%20y,"
                   "supervisor.slots.ports%3D%5B6700%2C6701%5D,"
                   "k%3Da%2Cb%25")
    assert bash("storm_options") == ""


def test_an_instances_ports_follow_its_base() -> None:
    out = bash('nimbus_port; sup_port 1; sup_port 2; slot_ports 1; slot_ports 2; port_span "$SUPERVISORS" "$SLOTS"; '
               "daemons | xargs", BASE="20000", SLOTS="4", SUPERVISORS="2")
    assert out.splitlines() == ["20000", "20011", "20012", "20020 20021 20022 20023", "20024 20025 20026 20027",
                                "28", "nimbus supervisor-1 supervisor-2"]
