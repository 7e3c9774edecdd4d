"""Hostile workers: each one tries to break out, and the test checks that it fails, that berth
reports how the worker ended, and that the node and the other workers are unharmed.

A worker writes what it saw to a JSON file in its own directory; the test reads it from the
host. No test sleeps: exits are waited for on berth's reports, worker files by bounded polling.
Every test runs on both isolating runtimes: the engine, and runc under berth-shim.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from berth import BerthError, Node, audit_worker
from berth._linux.cgroup import cgroup_dir

from ._helpers import TRY_READS, WAIT, WAIT_FOR_GO, WRITE_SECRETS, Exits, go, root_of, wait_file, worker
from .conftest import SOCKET, make_config

pytestmark = pytest.mark.integration


@pytest.fixture(params=["docker", "runc"])
def node(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> Iterator[Node]:
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    n = Node(make_config(base, node_name, runtime=request.param))
    yield n
    n.close()


def _report(node: Node, worker_id: str, name: str = "report.json") -> Any:
    path = root_of(node, worker_id) / name
    wait_file(path, node, worker_id)
    return json.loads(path.read_text())


# -- the filesystem -----------------------------------------------------------------------------

TRY_WRITES = r"""
import errno, json, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        with open(path, "a") as fh:
            fh.write("x")
        out[path] = "written"
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
json.dump(out, open(".report.json", "w"))
__import__("os").rename(".report.json", "report.json")
"""


def test_worker_cannot_write_outside_its_own_directories(node: Node) -> None:
    other = node.launch(worker("w-bob-w", WAIT_FOR_GO, user="berth-bob", topology_id="topo-b", port=6701),
                        on_exit=lambda r: None)
    plan = node.plan(worker("w-wr", "pass"))
    lay, other_lay = plan.layout, other.plan.layout
    pid = node.inspect("w-bob-w").pid
    assert pid
    own_pids = Path(cgroup_dir(pid, "pids")[0], "pids.max")  # bob's limit: alice must not raise it either
    forbidden = ["/x", "/usr/x", "/etc/passwd", "/etc/berth-x", "/bin/sh", f"{lay.supervisor_dir}/x",
                 f"{lay.supervisor_dir}/stormdist/x", f"{other_lay.worker_root}/x", f"{other_lay.worker_tmp}/x",
                 f"{other_lay.artifacts}/x", f"{node.config.node.local_dir}/workers-users/x",
                 f"{node.config.node.local_dir}/x", str(own_pids), "/sys/fs/cgroup/x", "/proc/sys/kernel/hostname",
                 "/sys/kernel/x"]
    allowed = [f"{lay.worker_root}/ok", "/tmp/ok", f"{lay.artifacts}/ok", f"{lay.shared_by_topology}/ok"]
    before = sorted(os.listdir(other_lay.worker_root))
    node.launch(worker("w-wr", TRY_WRITES, json.dumps(forbidden + allowed)), on_exit=lambda r: None)
    assert node.wait("w-wr", WAIT).exit_code == 0
    seen = json.loads((root_of(node, "w-wr") / "report.json").read_text())
    for path in forbidden:
        assert seen[path] in {"EROFS", "EACCES", "ENOENT", "EPERM"}, (path, seen[path])
    assert all(seen[p] == "written" for p in allowed), seen  # the probe can write where it should
    assert Path(lay.worker_tmp, "ok").read_text() == "x"  # and /tmp is its own tmp/ on the host
    assert sorted(os.listdir(other_lay.worker_root)) == before
    assert not Path(lay.supervisor_dir, "x").exists() and not Path(other_lay.worker_root, "x").exists()
    assert own_pids.read_text().strip() == str(other.plan.resources.pids_limit)
    go(node, "w-bob-w")
    node.wait("w-bob-w", WAIT)



def test_bobs_worker_cannot_read_alices_worker_files(node: Node, users: dict[str, Any]) -> None:
    plan = node.plan(worker("w-alice", "pass"))
    lay = plan.layout
    node.launch(worker("w-alice", WRITE_SECRETS, lay.worker_root, lay.worker_tmp, lay.artifacts,
                       lay.shared_by_topology), on_exit=lambda r: None)
    wait_file(root_of(node, "w-alice") / "ready", node, "w-alice")
    targets = [lay.worker_root, f"{lay.worker_root}/secret", f"{lay.worker_tmp}/secret", lay.artifacts,
               f"{lay.artifacts}/secret", lay.user_file, lay.shared_by_topology, f"{lay.shared_by_topology}/secret"]
    node.launch(worker("w-bob", TRY_READS, json.dumps(targets), user="berth-bob", topology_id="topo-b", port=6702),
                on_exit=lambda r: None)
    assert node.wait("w-bob", WAIT).exit_code == 0
    seen = json.loads((root_of(node, "w-bob") / "report.json").read_text())
    assert {p: v for p, v in seen.items() if v not in ("ENOENT", "EACCES")} == {}  # not even visible
    # And on the host, where the paths exist, bob's uid is kept out by the directory modes.
    assert (os.stat(lay.worker_root).st_mode & 0o777, os.stat(lay.worker_tmp).st_mode & 0o777,
            os.stat(lay.artifacts).st_mode & 0o777) == (0o700, 0o700, 0o700)
    bob = users["berth-bob"]
    for path in (lay.worker_root, lay.worker_tmp, lay.artifacts):
        probe = subprocess.run(["python3", "-c", "import os,sys; os.listdir(sys.argv[1])", path],
                               user=bob.pw_uid, group=bob.pw_gid, extra_groups=[], capture_output=True, text=True)
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, path
    go(node, "w-alice")
    node.wait("w-alice", WAIT)


# -- privileges -----------------------------------------------------------------------------------

SETUID_PROBE = r"""
import json, os, subprocess, sys, time
# su is setuid root in the image; it blocks reading a password from stdin, which is when its
# effective uid can be read from /proc.
r, w = os.pipe()
su = subprocess.Popen(["/usr/bin/su", "root", "-c", "id"], stdin=r, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
os.close(r)
# The name changes before execve commits the new credentials; su is past execve (and past its
# setuid) once it sleeps reading the password, so wait for both.
uids = None
for _ in range(3000):
    status = dict(l.split(":\t", 1) for l in open(f"/proc/{su.pid}/status").read().splitlines() if ":\t" in l)
    if status["Name"] == "su" and status["State"].startswith("S"):
        uids = status["Uid"].split()
        break
    time.sleep(0.01)
os.close(w)
su.wait()
mode = os.stat("/usr/bin/su").st_mode
out = json.dumps({"setuid_bit": bool(mode & 0o4000), "owner": os.stat("/usr/bin/su").st_uid, "uids": uids})
print(out, flush=True)
if len(sys.argv) > 1:
    open(".report.json", "w").write(out)
    os.rename(".report.json", "report.json")
"""


def test_a_setuid_root_binary_does_not_raise_the_euid(node: Node, node_name: str) -> None:
    node.launch(worker("w-suid", SETUID_PROBE, "report"), on_exit=lambda r: None)
    assert node.wait("w-suid", WAIT).exit_code == 0
    seen = json.loads((root_of(node, "w-suid") / "report.json").read_text())
    assert seen["setuid_bit"] is True and seen["owner"] == 0  # a real setuid-root binary...
    assert seen["uids"] == ["2101"] * 4  # ...that ran with the worker's uid: no-new-privileges
    if node.runtime.name != "docker":
        return  # the control below, on the engine, shows that the probe can see a raised euid
    # The probe can see a raised euid: the same image and user without no-new-privileges shows one.
    client = docker.APIClient(base_url=SOCKET, version="auto")
    cid = client.create_container("berth/python:latest", ["python3", "-c", SETUID_PROBE], user="2101:2101",
                                  labels={"berth.node": node_name, "berth.worker": "control-suid"},
                                  host_config=client.create_host_config(cap_drop=["ALL"], network_mode="host"))["Id"]
    client.start(cid)
    assert client.wait(cid, timeout=int(WAIT))["StatusCode"] == 0
    control = json.loads(client.logs(cid, stdout=True, stderr=False).decode().strip().splitlines()[-1])
    assert control["uids"][1] == "0"


ESCAPES = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
NR = {"x86_64": {"init_module": 175, "finit_module": 313, "delete_module": 176},
      "aarch64": {"init_module": 105, "finit_module": 273, "delete_module": 106}}[os.uname().machine]

def err(rc):
    return "succeeded" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")

def ptrace_protected():
    # another process, one that (like any process holding secrets) made itself non-dumpable
    ready_r, ready_w = os.pipe()
    hold_r, _hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
        os.write(ready_w, b"x")
        os.read(hold_r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    res = err(rc)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return res

def ptrace_host():
    return err(libc.ptrace(16, int(sys.argv[2]), None, None))

def sock(*args):
    try:
        socket.socket(*args).close()
        return "succeeded"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def mount_tmpfs():
    os.makedirs("/tmp/m", exist_ok=True)
    return err(libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None))

def mount_command():
    import subprocess
    os.makedirs("/tmp/m2", exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "none", "/tmp/m2"], capture_output=True)
    return "succeeded" if p.returncode == 0 else "EPERM"

def modules(name):
    if name == "finit_module":
        fd = os.open("/dev/null", os.O_RDONLY)
        return err(libc.syscall(NR[name], fd, b"", 0))
    if name == "init_module":
        image = ctypes.create_string_buffer(b"\x7fELF" + bytes(60))
        return err(libc.syscall(NR[name], image, 64, b""))
    return err(libc.syscall(NR[name], b"ext4", 0))

def io_uring():
    # io_uring_setup (425 on x86_64 and aarch64): a ring runs reads, writes, opens and connects that
    # no seccomp filter sees, and its kernel code has been a steady source of privilege escalations
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 4, params)
    if fd >= 0:
        os.close(fd)
        return "succeeded"
    return errno.errorcode.get(ctypes.get_errno(), "?")

ATTEMPTS = {
    "ptrace another process": ptrace_protected,
    "ptrace a host process": ptrace_host,
    "raw IP socket": lambda: sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "packet socket": lambda: sock(socket.AF_PACKET, socket.SOCK_RAW, 0),
    "mount(2)": mount_tmpfs,
    "mount command": mount_command,
    "unshare a user namespace": lambda: err(libc.unshare(0x10000000)),
    "init_module": lambda: modules("init_module"),
    "finit_module": lambda: modules("finit_module"),
    "delete_module": lambda: modules("delete_module"),
    "io_uring_setup": io_uring,
    "control: a TCP socket": lambda: sock(socket.AF_INET, socket.SOCK_STREAM),
}
ctypes.set_errno(0)
out = {"result": ATTEMPTS[sys.argv[1]]()}
json.dump(out, open(".report.json", "w"))
os.rename(".report.json", "report.json")
sys.exit(0 if out["result"] != "succeeded" or sys.argv[1].startswith("control") else 13)
"""

REFUSED = [
    ("ptrace another process", {"EPERM"}),
    ("ptrace a host process", {"ESRCH", "EPERM"}),  # not even visible from its pid namespace
    ("raw IP socket", {"EPERM"}),
    ("packet socket", {"EPERM"}),
    ("mount(2)", {"EPERM"}),
    ("mount command", {"EPERM"}),
    ("unshare a user namespace", {"EPERM"}),
    ("init_module", {"EPERM"}),
    ("finit_module", {"EPERM"}),
    ("delete_module", {"EPERM"}),
    ("io_uring_setup", {"EPERM", "ENOSYS"}),
    ("control: a TCP socket", {"succeeded"}),
]


@pytest.mark.parametrize(("attempt", "results"), REFUSED, ids=[a for a, _ in REFUSED])
def test_escape_attempt_is_refused(node: Node, attempt: str, results: set[str]) -> None:
    wid = "w-esc-" + "".join(c for c in attempt if c.isalnum())[:20].lower()
    node.launch(worker(wid, ESCAPES, attempt, str(os.getpid())), on_exit=lambda r: None)
    rec = node.wait(wid, WAIT)
    seen = json.loads((root_of(node, wid) / "report.json").read_text())
    assert seen["result"] in results, seen
    assert (rec.exit_code, rec.signal, rec.oom_killed) == (0, None, False)  # reported as the worker ended


# -- resources ------------------------------------------------------------------------------------

FORK_BOMB = r"""
import errno, json, os, sys
r, w = os.pipe()
kids, error = [], None
while len(kids) < 10000:
    try:
        pid = os.fork()
    except OSError as exc:
        error = errno.errorcode[exc.errno]
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # every child waits for the parent to let go
        os._exit(0)
    kids.append(pid)
json.dump({"forked": len(kids), "error": error}, open(".report.json", "w"))
os.rename(".report.json", "report.json")
""" + WAIT_FOR_GO + r"""
os.close(w)
for pid in kids:
    os.waitpid(pid, 0)
sys.exit(3)
"""


def test_fork_bomb_is_stopped_by_the_pids_limit_and_the_node_is_unharmed(node: Node) -> None:
    got = Exits()
    node.launch(worker("w-bomb", FORK_BOMB, pids_limit=32, memory_mb=256), on_exit=got)
    seen = _report(node, "w-bomb")
    assert seen["error"] == "EAGAIN" and 0 < seen["forked"] < 32
    pid = node.inspect("w-bomb").pid
    assert pid
    pids_dir = cgroup_dir(pid, "pids")[0]
    assert Path(pids_dir, "pids.max").read_text().strip() == "32"
    assert int(Path(pids_dir, "pids.current").read_text()) <= 32
    # while the bomb sits at its limit, the host forks and another worker starts and ends normally
    assert subprocess.run(["true"]).returncode == 0
    node.launch(worker("w-after-bomb", "print('fine')", port=6701), on_exit=got)
    assert got.of("w-after-bomb").exit_code == 0
    go(node, "w-bomb")
    rec = got.of("w-bomb")
    assert (rec.exit_code, rec.signal, rec.oom_killed) == (3, None, False)


MEMORY_HOG = "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))\n"


def test_memory_hog_is_oom_killed_and_its_neighbour_lives_on(node: Node) -> None:
    got = Exits()
    node.launch(worker("w-neighbour", WAIT_FOR_GO + "print('still here')\n", memory_mb=64, port=6701), on_exit=got)
    node.launch(worker("w-hog", MEMORY_HOG, memory_mb=48), on_exit=got)
    hog = got.of("w-hog")
    assert (hog.signal, hog.oom_killed) == (9, True)
    assert node.all_dead("w-neighbour") is False
    assert audit_worker(node, "w-neighbour").ok
    go(node, "w-neighbour")
    rec = got.of("w-neighbour")
    assert (rec.exit_code, rec.signal, rec.oom_killed) == (0, None, False)
    assert b"still here" in b"".join(node.logs("w-neighbour"))


CPU_HOG = r"""
import os, signal, time
spinners = []
for _ in range(max(2, os.cpu_count() or 1)):
    pid = os.fork()
    if pid == 0:
        while True:
            pass
    spinners.append(pid)
open("spinning", "w").close()
time.sleep(3)  # the worker's own clock; the host measures its own window around it
open("done", "w").close()
""" + WAIT_FOR_GO + r"""
for pid in spinners:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def _cpu_used_seconds(pid: int) -> float:
    d, version = cgroup_dir(pid, "cpuacct")
    if version == 1:
        return int(Path(d, "cpuacct.usage").read_text()) / 1e9
    d, _ = cgroup_dir(pid, "cpu")
    stat = dict(line.split() for line in Path(d, "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


def test_cpu_hog_stays_within_its_quota(node: Node) -> None:
    node.launch(worker("w-cpu", CPU_HOG, cpu_percent=50), on_exit=lambda r: None)
    root = root_of(node, "w-cpu")
    wait_file(root / "spinning", node, "w-cpu")
    pid = node.inspect("w-cpu").pid
    assert pid
    used0, t0 = _cpu_used_seconds(pid), time.monotonic()
    wait_file(root / "done", node, "w-cpu")
    used1, t1 = _cpu_used_seconds(pid), time.monotonic()
    used, window = used1 - used0, t1 - t0
    assert 0 < used <= 0.5 * window * 1.10 + 0.1, (used, window)  # at most half a cpu, whatever it asks
    go(node, "w-cpu")
    assert node.wait("w-cpu", WAIT).exit_code == 0


# -- holes found while writing these tests, fixed in the core ------------------------------------------

def test_another_users_request_cannot_take_over_a_topologys_shared_dir(node: Node, users: dict[str, Any]) -> None:
    shared = Path(node.plan(worker("w-own", "pass", topology_id="topo-s")).layout.shared_by_topology)
    node.launch(worker("w-own", "open(__import__('sys').argv[1] + '/alice.txt', 'w').write('mine')", str(shared),
                       topology_id="topo-s"), on_exit=lambda r: None)
    assert node.wait("w-own", WAIT).exit_code == 0
    steal = "import os, sys\nos.remove(sys.argv[1] + '/alice.txt')\n"
    try:
        node.launch(worker("w-thief", steal, str(shared), user="berth-bob", topology_id="topo-s", port=6701),
                    on_exit=lambda r: None)
    except BerthError:
        pass  # refusing the request is one right answer
    else:
        node.wait("w-thief", WAIT)
    assert os.stat(shared).st_uid == users["berth-alice"].pw_uid
    assert (shared / "alice.txt").read_text() == "mine"


def test_a_symlink_planted_by_a_worker_is_never_followed_by_berth(node: Node, base: Path) -> None:
    victim = base / "victim"
    victim.mkdir(mode=0o755)
    plant = (f"import os\nos.rename('tmp', 'tmp-old')\nos.symlink({str(victim)!r}, 'tmp')\n"
             "open('planted', 'w').close()\n" + WAIT_FOR_GO)
    handle = node.launch(worker("w-plant", plant), on_exit=lambda r: None)
    wait_file(root_of(node, "w-plant") / "planted", node, "w-plant")
    if node.runtime.name == "docker":  # the container removed behind berth's back
        docker.APIClient(base_url=SOCKET, version="auto").remove_container(handle.container_id, force=True)
    else:
        node.force_kill("w-plant")
    node.wait("w-plant", WAIT)
    with contextlib.suppress(BerthError):  # refusing to launch over a tampered directory is one right answer
        node.launch(worker("w-plant", "pass"), on_exit=lambda r: None)
    st = os.stat(victim)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)
