from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from berth import NodeConfig
from berth._cli import main


def _config(tmp_path: Path) -> Path:
    f = tmp_path / "berth.toml"
    f.write_text(f"""
[node]
name = "n1"
local_dir = "{tmp_path}/local"
log_dir = "{tmp_path}/log"
min_uid = 1
banned_users = []
[images]
default = "berth/busybox:latest"
""")
    return f


def _user() -> str:
    import pwd

    banned = NodeConfig().node.banned_users
    return next(p.pw_name for p in pwd.getpwall() if p.pw_uid >= 1000 and p.pw_gid != 0 and p.pw_name not in banned)


def test_explain_formats_and_creates_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    before = sorted(os.listdir(tmp_path))
    base = ["--config", str(cfg), "explain", "--worker-id", "w1", "--topology", "t1", "--port", "6700",
            "--user", _user(), "--memory", "64", "--env", "A=b c"]
    r = CliRunner().invoke(main, [*base, "--", "sh", "-c", "echo $A"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("docker run --name=w1 ")
    assert "--memory=64m" in r.output and "--pids-limit=1024" in r.output
    r = CliRunner().invoke(main, [*base, "--storm", "--", "sh"])
    assert "--pids-limit" not in r.output and "--label" not in r.output
    r = CliRunner().invoke(main, [*base, "--format", "engine", "--", "sh"])
    body = json.loads(r.output)
    assert body["name"] == "w1" and body["body"]["HostConfig"]["Memory"] == 64 * 1024 * 1024
    r = CliRunner().invoke(main, [*base, "--format", "text", "--", "sh"])
    assert "memory    64 MiB" in r.output
    assert sorted(os.listdir(tmp_path)) == before


def test_explain_spec_file_with_override(tmp_path: Path) -> None:
    spec = tmp_path / "w.yaml"
    spec.write_text(f"worker_id: w9\ntopology_id: tt\nport: 6701\nuser: {_user()}\nmemory_mb: 256\n"
                    "command: [python3, -m, worker]\n")
    r = CliRunner().invoke(main, ["--config", str(_config(tmp_path)), "explain", "--spec", str(spec),
                                  "--memory", "128"])
    assert r.exit_code == 0, r.output
    assert "--memory=128m" in r.output and "--name=w9" in r.output


def test_errors_are_one_line_naming_the_field(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    r = CliRunner().invoke(main, ["--config", str(cfg), "explain", "--worker-id", "a/b", "--topology", "tt",
                                  "--port", "1", "--user", _user(), "--", "x"])
    assert r.exit_code == 125
    assert r.output.startswith("error: worker_id: ")
    assert "Traceback" not in r.output
    spec = tmp_path / "bad.yaml"
    spec.write_text("worker_id: [unclosed\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "explain", "--spec", str(spec)])
    assert r.exit_code == 125 and r.output.startswith("error: spec: ") and "not valid YAML" in r.output
    spec.write_text("worker_id: ww\ntopology_id: tt\nport: 1\nuser: u\ncommand: [x]\nmemroy_mb: 5\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "explain", "--spec", str(spec)])
    assert r.output == "error: memroy_mb: unknown key\n"


def test_explain_with_a_storm_yaml_says_where_berth_differs(tmp_path: Path) -> None:
    """[3] --storm prints Storm's line (no --memory: enforcement off); the notes go to stderr."""
    for d in ("home", "nscd", "logs"):
        (tmp_path / d).mkdir()
    f = tmp_path / "storm.yaml"
    f.write_text(f"storm.home: {tmp_path}/home\nstorm.local.dir: {tmp_path}/local\nstorm.log.dir: {tmp_path}/logs\n"
                 f"storm.oci.nscd.dir: {tmp_path}/nscd\nstorm.oci.image: berth/busybox:latest\n"
                 "storm.oci.allowed.images: berth/busybox:latest\nstorm.zookeeper.servers: [zk1]\n")
    base = ["--config", str(f), "explain", "--worker-id", "w1", "--topology", "t1", "--port", "6700",
            "--user", _user(), "--memory", "64"]
    r = CliRunner().invoke(main, [*base, "--storm", "--", "sh"])
    assert r.exit_code == 0, r.output
    assert "--memory" not in r.stdout and r.stdout.rstrip().endswith(f"bash {tmp_path}/local/workers/w1/"
                                                                      "storm-worker-script.sh")
    assert "berth limits the worker to 64 MiB with no swap beyond it" in r.stderr
    r = CliRunner().invoke(main, [*base, "--format", "text", "--", "sh"])
    assert "Storm key not used by berth: storm.zookeeper.servers" in r.stdout
    f.write_text(f.read_text() + "storm.resource.isolation.plugin.enable: true\n"
                 "storm.resource.isolation.plugin: org.apache.storm.container.oci.RuncLibContainerManager\n"
                 "berth.runc.image.root: /srv/rootfs\n")
    r = CliRunner().invoke(main, [*base, "--storm", "--", "sh"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("docker run ")  # RuncLibContainerManager builds no such line: say whose it is
    assert "note: RuncLibContainerManager runs workers with runc, not docker run; the line is what Storm's " \
           "DockerManager builds for this storm.yaml" in r.stderr


def test_config_prints_the_loaded_config_as_toml(tmp_path: Path) -> None:
    import tomllib

    r = CliRunner().invoke(main, ["--config", str(_config(tmp_path)), "config"])
    assert r.exit_code == 0, r.output
    assert tomllib.loads(r.stdout)["node"] == {"name": "n1", "local_dir": f"{tmp_path}/local",
                                                "log_dir": f"{tmp_path}/log", "min_uid": 1, "banned_users": []}


def test_serve_with_a_bad_tcp_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    for bad in ("127.0.0.1:99999", "127.0.0.1:http", "localhost:0"):
        r = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--tcp", bad])
        assert r.exit_code == 125, r.output
        assert r.output.strip().splitlines() == [f"error: tcp: must be host:port or :port with a port in 1-65535, "
                                                 f"got {bad!r}"]
    assert not (tmp_path / "local").exists()  # no lock, no state, no socket: nothing started


def test_serve_and_supervise_with_an_unknown_socket_group_are_one_line_before_anything_starts(tmp_path: Path) -> None:
    """It used to start the supervisor, bind the socket (already at its mode), then die with a
    traceback, leaving the socket behind."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\nstate_dir = "{tmp_path}/state"\n')
                   + '[api]\nsocket_group = "no-such-group-x"\n')
    (tmp_path / "a.yaml").write_text("workers: []\n")
    for cmd in (["serve"], ["supervise", "--assignments", str(tmp_path / "a.yaml")]):
        r = CliRunner().invoke(main, ["--config", str(cfg), *cmd])
        assert r.exit_code == 125, r.output
        assert r.output.strip().splitlines() == ["error: api.socket_group: no such group 'no-such-group-x'"]
    assert not (tmp_path / "local").exists() and not (tmp_path / "state").exists()


def test_assignments_where_workers_can_reach_them_are_refused_before_anything_starts(tmp_path: Path) -> None:
    """A worker that could rewrite the node's assignments would run what it likes, as any user the
    node allows (past any tenant token); one that could read them would see every tenant's specs."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\nstate_dir = "{tmp_path}/state"\n'))
    inside = tmp_path / "local" / "supervisor"
    inside.mkdir(parents=True)
    (inside / "a.yaml").write_text("workers: []\n")
    (tmp_path / "link").symlink_to(inside)
    for path in (inside / "a.yaml", tmp_path / "link"):
        for cmd in (["supervise", "--assignments", str(path)], ["serve", "--assignments", str(path)]):
            r = CliRunner().invoke(main, ["--config", str(cfg), *cmd])
            assert r.exit_code == 125, r.output
            assert r.output.startswith(f"error: assignments: {path} resolves to "), r.output
            assert f"under node.local_dir ({tmp_path}/local), where workers" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--socket", str(inside / "api.sock")])
    assert r.exit_code == 125 and r.output.startswith(f"error: api.socket: {inside / 'api.sock'} resolves to ")
    assert not (tmp_path / "state").exists()


def test_explain_text_shows_the_nodes_capacity_and_what_it_holds(tmp_path: Path) -> None:
    """Issue 18 item 5: `explain` says how much the node may hold, and what its workers hold now
    (from the runtime; an engine that is down is said, nothing is written)."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[node]\n", '[node]\ndocker_host = "unix:///nonexistent/docker.sock"\n')
                   + "[capacity]\nmemory_mb = 2048\ncpu_percent = 300\npids = 5000\n")
    before = sorted(os.listdir(tmp_path))
    r = CliRunner().invoke(main, ["--config", str(cfg), "explain", "--worker-id", "w1", "--topology", "t1", "--port",
                                  "6700", "--user", _user(), "--memory", "64", "--format", "text", "--", "sh"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "capacity  memory 2048 MiB, cpu 300%, pids 5000" in lines
    assert any(x.startswith("admitted  unknown: engine: cannot reach the container engine") for x in lines)
    assert sorted(os.listdir(tmp_path)) == before


def test_serve_and_agent_refuse_a_node_whose_storm_yaml_names_berths_plugin(tmp_path: Path) -> None:
    """Storm's supervisor runs such a node's workers; berth's own supervisor or agent would stop them
    as unassigned. Both refuse before they start anything, naming the key."""
    from berth._storm.yaml import BERTH_PLUGIN

    for d in ("home", "nscd", "logs"):
        (tmp_path / d).mkdir()
    f = tmp_path / "storm.yaml"
    f.write_text(f"storm.home: {tmp_path}/home\nstorm.local.dir: {tmp_path}/local\nstorm.log.dir: {tmp_path}/logs\n"
                 f"storm.oci.nscd.dir: {tmp_path}/nscd\nstorm.oci.image: berth/busybox:latest\n"
                 "storm.oci.allowed.images: berth/busybox:latest\n"
                 f"storm.resource.isolation.plugin.enable: true\nstorm.resource.isolation.plugin: {BERTH_PLUGIN}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["serve"], ["agent", "--zk", "127.0.0.1:1", "--no-api"]):
        r = CliRunner().invoke(main, ["--config", str(f), *command])
        assert r.exit_code != 0, (command, r.output)
        assert "storm.resource.isolation.plugin" in r.output and "berth serve --storm" in r.output, (command, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
