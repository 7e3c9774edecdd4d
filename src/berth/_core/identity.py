"""Who a worker runs as, resolved from the node's user and group databases.

Storm shells out to ``id``; berth reads the same databases through libc, and refuses the
identities a worker must never have before anything else happens.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from .._exceptions import IdentityError


@dataclass(frozen=True)
class Identity:
    """A resolved worker user: uid, primary gid, and every gid (primary first, as ``id -G``)."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def docker_user(self) -> str:
        return f"{self.uid}:{self.gid}"


def check_identity(ident: Identity, min_uid: int, banned: Iterable[str]) -> Identity:
    """Refuse root, system accounts and banned users; kept apart from lookup so it is testable."""
    if ident.user in set(banned):
        raise IdentityError("user", f"{ident.user!r} is banned from running workers on this node")
    if ident.uid == 0 or ident.gid == 0:
        raise IdentityError("user", f"{ident.user!r} is root (uid/gid 0); workers never run as root")
    if 0 in ident.groups:
        raise IdentityError("user", f"{ident.user!r} is a member of group 0 (root); refused")
    if ident.uid < min_uid:
        raise IdentityError("user", f"{ident.user!r} has uid {ident.uid}, below the node's min_uid {min_uid}")
    return ident


def resolve_identity(user: str, min_uid: int = 1000, banned: Iterable[str] = ("bin",)) -> Identity:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise IdentityError("user", f"no such user {user!r} on this node") from None
    gids = [entry.pw_gid]
    for gid in os.getgrouplist(user, entry.pw_gid):
        if gid not in gids:
            gids.append(gid)
    ident = Identity(user=user, uid=entry.pw_uid, gid=entry.pw_gid, groups=tuple(gids))
    return check_identity(ident, min_uid, banned)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
