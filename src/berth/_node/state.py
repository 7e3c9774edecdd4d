"""berth's own state directory: checked at start, bound to the node it serves, and the claims that
let one launch of a worker id run at a time, across every berth process of the node.

The state dir holds what berth must be able to write whatever the workers do (the exit journal,
the claims, the supervisor's state, the API socket), so it lies apart from every tree a worker
can write (checked in the config, and here again on the resolved paths). A claim is an exclusive
``flock`` on ``claims/<worker_id>.lock``: the kernel releases it when its holder dies, so a berth
killed mid-launch never leaves an id claimed. A launch past admission (``admission.lock``) notes
what it takes beside its claim (``claims/<worker_id>.note``, locked the same way) for the launches
after it to count until the engine lists its container.

Everything in the state dir speaks of one node's workers (its desired state, handled exits,
claims): ``node.json`` names that node, written by the first
berth to use the dir; a config that names another node is refused before anything starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .._core.config import NodeConfig
from .._exceptions import ConfigError, LaunchError, PolicyError, StateError
from .._linux.fsprobe import probe_write
from .._paths import is_under

CLAIMS = "claims"
NOTE = ".note"
ADMISSION_LOCK = "admission.lock"
ADMISSION_WAIT_S = 30.0
IDENTITY = "node.json"
_CLAIM_ATTEMPTS = 100
"""A claim file another holder unlinked between our open and our lock is opened afresh; this
bounds how often (only a storm of concurrent claims of one id could need more than one)."""


class StateDir:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.path = Path(config.state_dir)
        self._admitting = threading.Lock()

    def _worker_reachable(self) -> dict[str, str]:
        """Every tree a worker can write or read, by config key."""
        n, c = self.config.node, self.config.container
        trees = {"node.local_dir": n.local_dir, "node.log_dir": n.log_dir,
                 "node.artifacts_dir": self.config.artifacts_root}
        if n.install_dir:
            trees["node.install_dir"] = n.install_dir
        if c.nscd_dir:
            trees["container.nscd_dir"] = c.nscd_dir
        for key in ("readonly_mounts", "readwrite_mounts"):
            for i, p in enumerate(getattr(c, key)):
                trees[f"container.{key}[{i}]"] = p
        return trees

    def check(self) -> None:
        """At start: the state dir can be made, is a private directory of berth's that it can
        write, and, with every symlink resolved, lies apart from what workers can reach.
        Raises ``ConfigError`` on ``node.state_dir``."""
        p = self.path
        try:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError("node.state_dir", f"cannot create {p}: {exc.strerror}") from exc
        real = os.path.realpath(p)
        for key, tree in self._worker_reachable().items():
            other = os.path.realpath(tree)
            if is_under(real, other) or is_under(other, real):
                raise ConfigError("node.state_dir", f"{p} resolves to {real}, which overlaps {key} ({other}), "
                                  "where workers write or read")
        if os.path.islink(p) or not os.path.isdir(p):
            raise ConfigError("node.state_dir", f"{p} is not a directory (a symlink to {real}?)")
        st = os.stat(p)
        if st.st_uid != os.geteuid():
            raise ConfigError("node.state_dir", f"{p} is owned by uid {st.st_uid}, not by berth (uid {os.geteuid()})")
        if st.st_mode & 0o022:
            raise ConfigError("node.state_dir", f"{p} is writable by others (mode {st.st_mode & 0o777:04o})")
        try:
            probe_write(p)
        except OSError as exc:
            raise ConfigError("node.state_dir", f"{p} is not writable: {exc.strerror}") from exc

    def identity(self) -> dict[str, object]:
        """What says which node's workers the state speaks of: the node's name. (Its runtime and
        engine may change under it: the demo runs on docker, then on runc, from one state dir.)"""
        return {"format": 1, "node": self.config.node.name}

    def bind(self) -> None:
        """Bind the state dir to this node, or raise ``StateError`` naming the node it holds the
        state of: another node name on the same dir would adopt that node's desired state and
        launch its workers a second time."""
        mine = self.identity()
        path = self.path / IDENTITY
        for _ in range(2):
            found = self._read_identity(path)
            if found is None:
                if self._create_identity(path, mine):
                    return
                continue  # another berth made it meanwhile: compare with that one
            if found.get("node") != mine["node"]:
                raise StateError("node.name", f"{self.path} holds the state of node {found.get('node')!r}; this "
                                 f"config is node {mine['node']!r}: give each node its own node.state_dir (to "
                                 f"rename this node, drain it, then remove {path})")
            return
        raise StateError("node.state_dir", f"{path} keeps changing")

    @staticmethod
    def _read_identity(path: Path) -> dict[str, object] | None:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(4097)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError("node.state_dir", f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw) if len(raw) <= 4096 else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("format") != 1:
            raise StateError("node.state_dir", f"{path} is not a berth node identity; nothing is used until it is "
                             "fixed (remove it to bind the state dir to this config's node)")
        return data

    def _create_identity(self, path: Path, mine: dict[str, object]) -> bool:
        """Write it whole or not at all (a temporary file linked into place); False when another
        berth made it first. ``LaunchError`` at ``state`` when it cannot be written."""
        tmp = self.path / f".{IDENTITY}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, json.dumps(mine).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:  # as a claim says it: a launch's step, nothing made
            raise LaunchError("state", f"state dir {self.path} is not writable: {exc.strerror} (writing "
                              f"{IDENTITY})") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True

    def check_apart(self, path: str, key: str, why: str) -> None:
        """Something berth trusts more than it trusts workers (the assignments, the API socket) lies,
        resolved, outside every tree a worker can write or read. Raises ``ConfigError`` on ``key``
        saying ``why`` it matters."""
        real = os.path.realpath(path)
        for tree_key, tree in self._worker_reachable().items():
            other = os.path.realpath(tree)
            if is_under(real, other):
                raise ConfigError(key, f"{path} resolves to {real}, under {tree_key} ({other}), where workers "
                                  f"write or read: {why}")

    @contextlib.contextmanager
    def admission(self) -> Iterator[Admitting]:
        """Hold the node's admission lock: one launch at a time counts what the node holds and notes
        what it takes (``Claim.note``), so two launches never both fit into the last room. Held
        only for that (a listing, a few small files), never across a container's creation; waited
        for at most ``ADMISSION_WAIT_S`` (``LaunchError`` at ``admission`` past it). Threads of
        this process queue on a lock of their own first, then processes on the file's ``flock``."""
        path = self.path / ADMISSION_LOCK
        deadline = time.monotonic() + ADMISSION_WAIT_S
        stuck = LaunchError("admission", f"{path} stayed locked for {ADMISSION_WAIT_S:g}s (another berth "
                            "process is stuck while admitting a worker)")
        if not self._admitting.acquire(timeout=ADMISSION_WAIT_S):
            raise stuck
        try:
            try:
                self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise LaunchError("state", f"state dir {self.path} is not writable: {exc.strerror}") from exc
            try:
                pause = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise stuck from None
                        time.sleep(pause)
                        pause = min(pause * 2, 0.02)
                yield Admitting(fd)
            finally:
                os.close(fd)
        finally:
            self._admitting.release()

    def launching(self) -> dict[str, bytes]:
        """The notes of launches under way (past admission, perhaps not yet in the engine's
        listing), by worker id. Call it holding ``admission``: notes are made only under it, so
        a note nobody holds is a dead launcher's and goes."""
        d = self.path / CLAIMS
        try:
            names = [n for n in os.listdir(d) if n.endswith(NOTE)]
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            try:
                fd = os.open(d / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # its launcher holds it: under way
                    out[name.removesuffix(NOTE)] = os.pread(fd, 4096, 0)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(d / name)
            finally:
                os.close(fd)
        return out

    @contextlib.contextmanager
    def claim(self, worker_id: str, required: bool = True) -> Iterator[Claim]:
        """Hold the claim on ``worker_id`` (a validated id) for the ``with`` block.

        Raises ``PolicyError`` on ``worker_id`` when another process or thread holds it, and
        ``LaunchError`` at ``state`` when the state dir cannot be written; with ``required``
        False the block then runs unclaimed (removing needs no claim where no launch can run).
        """
        d = self.path / CLAIMS
        path = d / f"{worker_id}.lock"
        fd = -1
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            for _ in range(_CLAIM_ATTEMPTS):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise PolicyError("worker_id", f"a launch of {worker_id!r} is already under way (another "
                                      "berth process or thread holds it)") from None
                mine = os.fstat(fd)
                try:
                    now = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    break
                os.close(fd)  # its holder released and unlinked it meanwhile: claim the new one
                fd = -1
            else:
                raise PolicyError("worker_id", f"a launch of {worker_id!r} is already under way (claims keep "
                                  "changing hands)")
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            if required:
                raise LaunchError("state", f"state dir {self.path} is not writable: {exc.strerror}") from exc
            fd = -1
        held = Claim(d / f"{worker_id}{NOTE}")
        try:
            yield held
        finally:
            held.release()
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # while still holding it: a later claim makes a new file
                os.close(fd)


class Admitting:
    """The held admission lock, and its count of admissions: every admission of any berth process
    adds one, so a process that sees the count where it left it knows no other has admitted since."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def count(self) -> int:
        raw = os.pread(self._fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    def bump(self) -> int:
        n = (self.count() + 1) % (1 << 63)
        os.pwrite(self._fd, n.to_bytes(8, "little"), 0)
        return n


class Claim:
    """A held claim on a worker id; a launch past admission notes on it what it takes."""

    def __init__(self, note_path: Path) -> None:
        self._path = note_path
        self._fd = -1

    def note(self, data: bytes) -> None:
        """Say what the launch takes until its container is listed (call it holding ``admission``)."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._fd = fd  # from here on, release() removes it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else: readers and writers hold admission
        os.write(fd, data)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            os.close(self._fd)
            self._fd = -1

