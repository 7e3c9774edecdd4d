#!/usr/bin/env python3
"""Build berth's development images without any container registry.

    scripts/build-images [--only busybox|python|storm] [--force] [--rebuild-rootfs] [--no-import]

Images (imported with `docker import` into the engine named by DOCKER_HOST,
default unix:///run/berth-dev/docker.sock — start it with `scripts/engine start`):

  berth/busybox:latest   /bin/busybox from Debian's busybox-static plus a symlink for every
                         applet (bin/, sbin/, usr/bin/, usr/sbin/ as `busybox --list-full` says),
                         /etc/passwd and /etc/group with root and nobody, /tmp /proc /sys /dev.
                         It has busybox `sh` only: there is NO bash in this image.
  berth/python:latest    debootstrap --variant=minbase --include=python3-minimal,libpython3-stdlib,procps bookworm,
  berth/python:3.11      apt caches and docs removed; has bash, python3, ps.
  berth/python:3.11.N    (tags follow the python version debootstrap installed)
  berth/storm:latest     debootstrap --variant=minbase --include=openjdk-17-jre-headless,procps bookworm,
  berth/storm:java-17.N  trimmed as python: Storm's workers; java at /usr/lib/jvm/java-17-openjdk-amd64/bin/java
                         (the path a Storm supervisor's JAVA_HOME names), bash, ps, kill.

The unpacked root filesystems are kept for bare runc (a stamp file marks a complete one):
  $BERTH_DEV_ROOT/rootfs/busybox   + rootfs/busybox.stamp
  $BERTH_DEV_ROOT/rootfs/python    + rootfs/python.stamp        (BERTH_DEV_ROOT=/var/lib/berth-dev)
  $BERTH_DEV_ROOT/rootfs/storm     + rootfs/storm.stamp

Idempotent: a cached root filesystem is reused; an image already in the engine and built from
the current root filesystem (label org.berth.rootfs.id) is skipped unless --force.
--rebuild-rootfs also throws the cached root filesystems away. --no-import only builds the
root filesystems (no engine needed). Debian mirror: the host's apt sources (override with
BERTH_DEBIAN_MIRROR); suite: bookworm (override with --suite). Needs root.
Missing tools (busybox-static, debootstrap) are installed with apt-get. A cached root filesystem
is rebuilt when its package list changes.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST = "unix:///run/berth-dev/docker.sock"
ROOT = os.environ.get("BERTH_DEV_ROOT", "/var/lib/berth-dev")
ROOTFS = os.path.join(ROOT, "rootfs")
LOGS = os.path.join(ROOT, "logs")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGES = ("busybox", "python", "storm")
PY_PACKAGES = ("python3-minimal", "libpython3-stdlib", "procps")  # json, signal helpers: the stdlib workers need
# Storm's workers: Debian's Java at the path a supervisor's JAVA_HOME names (the worker's command
# line is the supervisor's $JAVA_HOME/bin/java), bash for the worker script, ps and kill
STORM_PACKAGES = ("openjdk-17-jre-headless", "procps")
JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"

os.environ["PATH"] = PATH_ENV + ":" + os.environ.get("PATH", "")
os.environ["DOCKER_HOST"] = os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class Failure(Exception):
    pass


# ------------------------------------------------------------------ output
class Progress:
    def __init__(self, total: int):
        self.total = total
        self.n = 0
        self.t0 = 0.0

    def step(self, text: str) -> None:
        self.n += 1
        self.t0 = time.monotonic()
        print(f"[{self.n}/{self.total}] {text}", flush=True)

    def done(self, text: str = "done") -> None:
        print(f"      {text} ({time.monotonic() - self.t0:.1f} s)", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


# ------------------------------------------------------------------ helpers
Json = dict[str, Any]


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    kw.setdefault("check", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        out = (e.stderr or b"") if isinstance(e.stderr, bytes) else (e.stderr or "").encode()
        raise Failure(f"{' '.join(cmd)} failed (exit {e.returncode})\n{out.decode(errors='replace')[-3000:]}") from e
    except FileNotFoundError as e:
        raise Failure(f"{cmd[0]}: command not found") from e


def docker(*args: str, capture: bool = True, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[Any]:
    if capture:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    return run(["docker", *args], check=check, **kw)


def engine_ok() -> str | None:
    if not shutil.which("docker"):
        return None
    p = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=20,
    )
    return p.stdout.strip() if p.returncode == 0 else None


def image_label(ref: str, label: str) -> str | None:
    """The label's value; '' when the image exists without it; None when there is no image."""
    p = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if p.returncode != 0:
        return None
    labels: dict[str, str] = json.loads(p.stdout.strip() or "null") or {}
    return labels.get(label, "")


def image_size(ref: str) -> int:
    p = docker("image", "inspect", "--format", "{{.Size}}", ref, text=True)
    return int(p.stdout.strip())


def apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"      apt-get update && apt-get install {' '.join(packages)}", flush=True)
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)


def is_static_elf(path: str) -> bool:
    """True if the ELF file has no PT_INTERP program header (i.e. it is statically linked)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
            return False
        end = "<" if hdr[5] == 1 else ">"
        (phoff,) = struct.unpack(end + "Q", hdr[32:40])
        phentsize, phnum = struct.unpack(end + "HH", hdr[54:58])
        f.seek(phoff)
        for _ in range(phnum):
            ph = f.read(phentsize)
            if struct.unpack(end + "I", ph[:4])[0] == 3:  # PT_INTERP
                return False
    return True


def mounts_under(path: str) -> list[str]:
    path = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


def safe_rmtree(path: str) -> None:
    """rm -rf that first unmounts anything a failed debootstrap left mounted inside."""
    if not os.path.lexists(path):
        return
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    left = mounts_under(path)
    if left:
        raise Failure(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    run(["rm", "-rf", "--one-file-system", "--", path])


def dir_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def read_stamp(name: str) -> Json | None:
    stamp = os.path.join(ROOTFS, f"{name}.stamp")
    if not (os.path.isdir(os.path.join(ROOTFS, name)) and os.path.isfile(stamp)):
        return None
    try:
        with open(stamp) as f:
            info: Json = json.load(f)
            return info
    except (OSError, ValueError):
        return None


def write_stamp(name: str, info: Json) -> Json:
    info = dict(
        info,
        id=uuid.uuid4().hex[:12],
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        path=os.path.join(ROOTFS, name),
        size=dir_size(os.path.join(ROOTFS, name)),
    )
    tmp = os.path.join(ROOTFS, f".{name}.stamp.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(ROOTFS, f"{name}.stamp"))
    return info


def host_mirror(suite: str) -> str:
    """The Debian mirror the host's apt sources use for `suite` (deb822 .sources or one-line .list)."""
    if os.environ.get("BERTH_DEBIAN_MIRROR"):
        return os.environ["BERTH_DEBIAN_MIRROR"]
    candidates: list[tuple[str, list[str], list[str]]] = []  # (uri, suites, components)
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for fn in files:
        try:
            with open(fn) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if m:
                candidates.append((m.group(1), [m.group(2)], m.group(3).split()))
    for fn in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            with open(fn) as f:
                text = f.read()
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in para.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    for uri, suites, comps in candidates:
        if suite in suites and "main" in comps:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


# ------------------------------------------------------------------ root filesystems
def build_busybox_rootfs(prog: Progress, rebuild: bool) -> Json:
    name = "busybox"
    stamp = read_stamp(name)
    if stamp and not rebuild:
        prog.step(f"rootfs busybox: cached at {stamp['path']} ({human(stamp['size'])})")
        return stamp
    prog.step("rootfs busybox from busybox-static (about 1 s)…")
    bb = "/bin/busybox"
    if not (os.path.exists(bb) and is_static_elf(bb)):
        apt_install(["busybox-static"])
    if not is_static_elf(bb):
        raise Failure(f"{bb} is not statically linked (is busybox-static installed?)")
    version = (
        subprocess.run([bb], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.splitlines()[0].strip()
    )
    applets = subprocess.run([bb, "--list-full"], stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    final = os.path.join(ROOTFS, name)
    tmp = os.path.join(ROOTFS, f".{name}.tmp")
    safe_rmtree(tmp)
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "dev",
        "proc",
        "sys",
        "tmp",
        "var/tmp",
        "root",
        "home",
        "run",
    ):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    os.chmod(os.path.join(tmp, "tmp"), 0o1777)
    os.chmod(os.path.join(tmp, "var/tmp"), 0o1777)
    os.chmod(os.path.join(tmp, "root"), 0o700)
    shutil.copy2(bb, os.path.join(tmp, "bin/busybox"))
    os.chmod(os.path.join(tmp, "bin/busybox"), 0o755)
    n = 0
    for rel in applets:
        rel = rel.lstrip("/")
        if rel == "bin/busybox" or ".." in rel.split("/"):
            continue
        dst = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink("/bin/busybox", dst)
            n += 1
    if not os.path.lexists(os.path.join(tmp, "bin/sh")):
        os.symlink("/bin/busybox", os.path.join(tmp, "bin/sh"))
    nologin = "/sbin/nologin" if os.path.lexists(os.path.join(tmp, "sbin/nologin")) else "/bin/false"
    files = {
        "etc/passwd": f"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:{nologin}\n",
        "etc/group": "root:x:0:\nnobody:x:65534:\n",
        "etc/hostname": "berth\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": "",
    }
    for rel, text in files.items():
        with open(os.path.join(tmp, rel), "w") as f:
            f.write(text)
    safe_rmtree(final)
    os.rename(tmp, final)
    prog.done(f"{version.split(' (')[0]}, {n} applet links, sh only (no bash)")
    return write_stamp(name, {"source": version, "applets": n})


@dataclass(frozen=True)
class Deboot:
    """A root filesystem debootstrap makes: Debian's packages, the programs it must have, and the
    command (run in a chroot) whose output is the version its tags follow."""

    name: str
    packages: tuple[str, ...]
    exes: tuple[str, ...]
    version_cmd: tuple[str, ...]
    version_key: str
    seconds: str


PYTHON = Deboot(
    "python", PY_PACKAGES, ("bin/bash", "usr/bin/python3", "bin/ps"),
    ("/usr/bin/python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"), "python_version", "30-90",
)
STORM = Deboot(
    "storm", STORM_PACKAGES, ("bin/bash", JAVA[1:], "bin/ps", "bin/kill"),
    ("/bin/sh", "-c", f"{JAVA} -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.version = //p'"),
    "java_version", "60-180",
)
TRIM = [
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*_*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
]


def build_deboot_rootfs(prog: Progress, rebuild: bool, suite: str, img: Deboot) -> Json:
    name = img.name
    stamp = read_stamp(name)
    if stamp and stamp.get("packages") != list(img.packages):
        stamp = None  # the package list changed: the cached root filesystem is stale
    if stamp and not rebuild:
        prog.step(
            f"debootstrap {suite} ({name}): cached at {stamp['path']} ({human(stamp['size'])}, "
            f"{img.version_key.split('_')[0]} {stamp.get(img.version_key)})"
        )
        prog.step(f"trim {name} rootfs: cached")
        return stamp
    mirror = host_mirror(suite)
    prog.step(f"debootstrap {suite} --variant=minbase +{','.join(img.packages)} from {mirror} (about {img.seconds} s)…")
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap", "debian-archive-keyring"])
    final = os.path.join(ROOTFS, name)
    tmp = os.path.join(ROOTFS, f".{name}.tmp")
    safe_rmtree(tmp)
    os.makedirs(LOGS, exist_ok=True)
    log_path = os.path.join(LOGS, f"debootstrap-{name}.log")
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(img.packages)}",
        "--components=main",
        suite,
        tmp,
        mirror,
    ]
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    if os.path.exists(keyring):
        cmd.insert(1, f"--keyring={keyring}")
    debootstrap(prog, cmd, log_path, tmp)

    prog.step(f"trim {name} rootfs (apt caches, lists, docs) and check {', '.join('/' + e for e in img.exes)}…")
    before = dir_size(tmp)
    for pat in TRIM:
        for path in glob.glob(os.path.join(tmp, pat)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for rel in ("etc/hostname",):
        with open(os.path.join(tmp, rel), "w") as f:
            f.write("berth\n")
    # resolv.conf copied from the host by debootstrap: docker replaces it anyway, runc users bind it.
    rc_path = os.path.join(tmp, "etc/resolv.conf")
    if os.path.lexists(rc_path) and not os.path.islink(rc_path):
        open(rc_path, "w").close()
    for exe in img.exes:
        if not os.path.lexists(os.path.join(tmp, exe)) and not os.path.lexists(os.path.join(tmp, "usr", exe)):
            raise Failure(f"{name} rootfs has no /{exe}")
    out = in_chroot(tmp, img.version_cmd)
    if not out:
        raise Failure(f"{name} rootfs: {' '.join(img.version_cmd)} printed no version")
    safe_rmtree(final)
    os.rename(tmp, final)
    after = dir_size(final)
    prog.done(f"{img.version_key.split('_')[0]} {out}; {human(before)} -> {human(after)}")
    return write_stamp(name, {"suite": suite, "mirror": mirror, "packages": list(img.packages), img.version_key: out})


def in_chroot(root: str, cmd: tuple[str, ...]) -> str:
    """The output of cmd run in a chroot of root, with /proc mounted as a container has it (the
    dynamic loader finds a program's $ORIGIN libraries, Java's libjli, through /proc/self/exe)."""
    proc = os.path.join(root, "proc")
    run(["mount", "-t", "proc", "proc", proc])
    try:
        return str(run(["chroot", root, *cmd], capture_output=True, text=True).stdout.strip())
    finally:
        run(["umount", proc])


def debootstrap(prog: Progress, cmd: list[str], log_path: str, tmp: str) -> None:
    """Run debootstrap, showing its stages (not each package), and leave nothing behind on failure."""
    stage = re.compile(r"^(I: .*(\.\.\.|successfully\.?)|[WE]: .*)$")
    per_package = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [^ ]+\.\.\.$")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C"),
        )
        assert p.stdout is not None
        for line in p.stdout:
            log.write(line)
            line = line.rstrip()
            if stage.match(line) and not per_package.match(line):
                print(f"      {time.monotonic() - t0:5.1f}s {line}", flush=True)
        rc = p.wait()
    if rc != 0:
        with open(log_path) as f:
            tail = f.read().splitlines()[-25:]
        extra = os.path.join(tmp, "debootstrap/debootstrap.log")
        if os.path.exists(extra):
            with open(extra, errors="replace") as f:
                tail += ["--- " + extra, *f.read().splitlines()[-25:]]
        safe_rmtree(tmp)
        raise Failure(f"debootstrap failed (exit {rc}); log {log_path}\n" + "\n".join(tail))
    left = mounts_under(tmp)
    if left:
        safe_rmtree(tmp)
        raise Failure(f"debootstrap left mounts behind: {left}")
    prog.done(f"log {log_path}")


# ------------------------------------------------------------------ images
def import_image(
    prog: Progress, stamp: Json, repo: str, tags: list[str], cmd: list[str], force: bool
) -> tuple[str, str]:
    """Returns (status, ref)."""
    ref = f"{repo}:{tags[0]}"
    current = image_label(ref, "org.berth.rootfs.id")
    if current == stamp["id"] and not force:
        prog.step(f"import {ref}: already in the engine (same rootfs {stamp['id']}), skipped")
        for t in tags[1:]:
            docker("tag", ref, f"{repo}:{t}")
        return "present", ref
    prog.step(f"import {ref} from {stamp['path']} (tar | docker import)…")
    old_id = None
    if current is not None:
        old_id = docker("image", "inspect", "--format", "{{.Id}}", ref, text=True).stdout.strip()
    changes = [
        f"ENV PATH={PATH_ENV}",
        f"CMD {json.dumps(cmd)}",
        f"LABEL org.berth.rootfs.id={stamp['id']}",
        f"LABEL org.berth.rootfs.built_at={stamp['built_at']}",
    ]
    args = ["docker", "import", "--message", f"berth {repo} from {stamp['path']}"]
    for c in changes:
        args += ["--change", c]
    args += ["-", ref]
    tar = subprocess.Popen(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "-C",
            stamp["path"],
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    imp = subprocess.run(args, stdin=tar.stdout, capture_output=True, text=True)
    tar.stdout.close()
    trc = tar.wait()
    if trc != 0 or imp.returncode != 0:
        raise Failure(
            f"import of {ref} failed: tar exit {trc}, docker import exit {imp.returncode}\n{imp.stderr.strip()}"
        )
    for t in tags[1:]:
        docker("tag", ref, f"{repo}:{t}")
    if old_id and old_id != imp.stdout.strip():
        # the replaced image is now untagged: drop it unless a container still uses it
        docker("image", "rm", old_id, check=False)
    prog.done(f"{imp.stdout.strip()[:19]}; tags: {', '.join(f'{repo}:{t}' for t in tags)}")
    return ("rebuilt" if current is not None else "built"), ref


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=IMAGES, help="build one image only")
    ap.add_argument("--force", action="store_true", help="re-import images already present")
    ap.add_argument(
        "--rebuild-rootfs",
        action="store_true",
        help="discard cached root filesystems and build them again (implies --force)",
    )
    ap.add_argument(
        "--no-import",
        action="store_true",
        help="only build the root filesystems under $BERTH_DEV_ROOT/rootfs (no engine needed)",
    )
    ap.add_argument("--suite", default="bookworm", help="Debian suite for the python and storm images (bookworm)")
    a = ap.parse_args()
    force = a.force or a.rebuild_rootfs
    if os.geteuid() != 0:
        print("build-images: must run as root (debootstrap, chroot, device files)", file=sys.stderr)
        return 2
    wanted = [a.only] if a.only else list(IMAGES)
    host = os.environ["DOCKER_HOST"]
    if not a.no_import:
        ver = engine_ok()
        if not ver:
            print(
                f"build-images: no engine answers at DOCKER_HOST={host}\n"
                f"  start it with: scripts/engine start   (or use --no-import)",
                file=sys.stderr,
            )
            return 2
        print(f"engine: {host} (server {ver})")
    total = 0
    for w in wanted:
        total += (1 if w == "busybox" else 2) + (0 if a.no_import else 1)
    prog = Progress(total)
    os.makedirs(ROOTFS, exist_ok=True)
    with open(os.path.join(ROOTFS, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("build-images: another build-images is running; waiting for it…", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return build(a, wanted, force, prog)


def build(a: argparse.Namespace, wanted: list[str], force: bool, prog: Progress) -> int:
    rows: list[tuple[str, str, str, str]] = []
    try:
        for w in wanted:
            t0 = time.monotonic()
            if w == "busybox":
                stamp = build_busybox_rootfs(prog, a.rebuild_rootfs)
                repo, tags, cmd = "berth/busybox", ["latest"], ["/bin/sh"]
            elif w == "python":
                stamp = build_deboot_rootfs(prog, a.rebuild_rootfs, a.suite, PYTHON)
                v = stamp["python_version"]
                repo, tags, cmd = "berth/python", ["latest", v.rsplit(".", 1)[0], v], ["python3"]
            else:
                stamp = build_deboot_rootfs(prog, a.rebuild_rootfs, a.suite, STORM)
                v = stamp["java_version"]
                repo, tags, cmd = "berth/storm", ["latest", f"java-{v}"], [JAVA, "-version"]
            if a.no_import:
                status, size, refs = "rootfs only", stamp["size"], stamp["path"]
            else:
                status, ref = import_image(prog, stamp, repo, tags, cmd, force)
                size = image_size(ref)
                refs = ", ".join(f"{repo}:{t}" for t in tags)
            rows.append((refs, human(size), f"{time.monotonic() - t0:.1f}", status))
    except Failure as e:
        print(f"\nbuild-images: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbuild-images: interrupted", file=sys.stderr)
        return 130

    head = ("image", "size", "seconds", "status")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    print()
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(widths[i]) if i in (0, 3) else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
    print(f"\nroot filesystems: {', '.join(f'{ROOTFS}/{w}' for w in wanted)} (stamps: *.stamp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
