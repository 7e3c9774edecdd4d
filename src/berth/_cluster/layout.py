"""Where the cluster lives in ZooKeeper, and who may touch what.

    <root>                          coordinator: all        (nobody else: no world, no anonymous)
    <root>/nodes/<node>             coordinator: all        node: read, create, delete (its children)
    <root>/nodes/<node>/live        ephemeral registration   node: all but admin; coordinator: read
    <root>/nodes/<node>/state       the node's report        node: read, write; coordinator: all
    <root>/assignments/<node>       the node's document      coordinator: all; node: read
    <root>/schedule/{topologies,state,lock,drain}            coordinator only

ACLs are per znode and not inherited, so every znode names its readers and writers: a node can
read only its own assignment document and write only under its own ``nodes/<node>``; only the
coordinator writes assignments. Storm gives Nimbus and every supervisor one shared identity;
berth gives each node its own digest identity (``node-<name>``) and the coordinator another.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass

from kazoo.security import ACL, Id, Permissions, make_acl, make_digest_acl_credential

from .._core.trust import exposed
from .._exceptions import ClusterError

NODE_PREFIX = "node-"
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_CREDENTIAL_BYTES = 1024
MIN_PASSWORD = 16


@dataclass(frozen=True)
class ZkLayout:
    """Where berth keeps a cluster's znodes under ``root`` (not ``_core.layout.Layout``, which is
    where one worker's files are on a node)."""

    root: str = "/berth"

    @property
    def nodes(self) -> str:
        return f"{self.root}/nodes"

    @property
    def assignments(self) -> str:
        return f"{self.root}/assignments"

    @property
    def schedule(self) -> str:
        return f"{self.root}/schedule"

    def node(self, name: str) -> str:
        return f"{self.nodes}/{name}"

    def live(self, name: str) -> str:
        return f"{self.nodes}/{name}/live"

    def state(self, name: str) -> str:
        return f"{self.nodes}/{name}/state"

    def assignment(self, name: str) -> str:
        return f"{self.assignments}/{name}"

    @property
    def topologies(self) -> str:
        return f"{self.schedule}/topologies"

    @property
    def schedule_state(self) -> str:
        return f"{self.schedule}/state"

    @property
    def lock(self) -> str:
        return f"{self.schedule}/lock"

    @property
    def drains(self) -> str:
        return f"{self.schedule}/drain"


@dataclass(frozen=True)
class Credential:
    """A ZooKeeper digest identity: ``user:password``. Only its digest is ever stored in an ACL."""

    user: str
    password: str

    @property
    def digest_id(self) -> str:
        return str(make_digest_acl_credential(self.user, self.password))

    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]

    def __repr__(self) -> str:  # never print the password
        return f"Credential(user={self.user!r})"


def node_user(node: str) -> str:
    return NODE_PREFIX + node


def new_credential(user: str) -> Credential:
    if not USER_PATTERN.fullmatch(user):
        raise ClusterError("user", f"{user!r} must be 1-128 of A-Z a-z 0-9 '_' '.' '-'")
    return Credential(user, secrets.token_urlsafe(32))


def read_credential(path: str) -> Credential:
    """Read ``user:password`` from a file only its owner can read (as ssh treats a private key)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ClusterError("auth_file", f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ClusterError("auth_file", f"{path} is not a regular file")
        problem = exposed(st)
        if problem:
            raise ClusterError("auth_file", f"{path} {problem}; chmod 600 it")
        raw = os.read(fd, MAX_CREDENTIAL_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise ClusterError("auth_file", f"{path} is larger than {MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ClusterError("auth_file", f"{path} is not UTF-8 text") from None
    user, colon, password = text.partition(":")
    if not colon or not USER_PATTERN.fullmatch(user) or "\n" in password:
        raise ClusterError("auth_file", f"{path} must hold one line user:password")
    if len(password) < MIN_PASSWORD:
        raise ClusterError("auth_file", f"{path}: the password must have at least {MIN_PASSWORD} characters")
    return Credential(user, password)


def write_credential(path: str, cred: Credential) -> None:
    """Create the file (never overwrite one), owner-only from its first byte."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ClusterError("auth_file", f"{path} exists already; remove it first to make a new identity") from None
    except OSError as exc:
        raise ClusterError("auth_file", f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{cred.user}:{cred.password}\n")


# -- ACLs -------------------------------------------------------------------------------------

def digest(digest_id: str, perms: int) -> ACL:
    return ACL(perms, Id("digest", digest_id))


def coordinator_only(coordinator: str) -> list[ACL]:
    return [digest(coordinator, Permissions.ALL)]


def node_dir_acl(coordinator: str, node: str) -> list[ACL]:
    return [digest(coordinator, Permissions.ALL),
            digest(node, Permissions.READ | Permissions.CREATE | Permissions.DELETE)]


def assignment_acl(coordinator: str, node: str) -> list[ACL]:
    return [digest(coordinator, Permissions.ALL), digest(node, Permissions.READ)]


def state_acl(coordinator: str, node: str) -> list[ACL]:
    return [digest(coordinator, Permissions.ALL), digest(node, Permissions.READ | Permissions.WRITE)]


def live_acl(coordinator: str) -> list[ACL]:
    """The node's own registration: the ``auth`` scheme means "the identity of this session"."""
    own = make_acl("auth", "", read=True, write=True, create=True, delete=True)
    return [own, digest(coordinator, Permissions.READ)]
