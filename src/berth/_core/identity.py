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
    group_names: tuple[str, ...] = ()
    """The names of ``groups``, in the same order (a gid without a name: its number)."""

    @property
    def docker_user(self) -> str:
        return f"{self.uid}:{self.gid}"


def check_identity(ident: Identity, min_uid: int, banned: Iterable[str], *, allowed_users: Iterable[str] = (),
                   allowed_groups: Iterable[str] = ()) -> Identity:
    """Refuse root, system accounts, banned users, and, when the node has allow lists, everyone
    not on them (by user name, or by the name of any of the user's groups). Banned wins over
    allowed. Kept apart from lookup so it is testable."""
    if ident.user in set(banned):
        raise IdentityError("user", f"{ident.user!r} is banned from running workers on this node")
    if ident.uid == 0 or ident.gid == 0:
        raise IdentityError("user", f"{ident.user!r} is root (uid/gid 0); workers never run as root")
    if 0 in ident.groups:
        raise IdentityError("user", f"{ident.user!r} is a member of group 0 (root); refused")
    if ident.uid < min_uid:
        raise IdentityError("user", f"{ident.user!r} has uid {ident.uid}, below the node's min_uid {min_uid}")
    users, groups = set(allowed_users), set(allowed_groups)
    if (users or groups) and ident.user not in users and not groups.intersection(ident.group_names):
        raise IdentityError("user", f"{ident.user!r} may not run workers on this node: not in node.allowed_users, "
                            "nor a member of a group in node.allowed_groups")
    return ident


def resolve_identity(user: str, min_uid: int = 1000, banned: Iterable[str] = ("bin", "nobody"), *,
                     allowed_users: Iterable[str] = (), allowed_groups: Iterable[str] = ()) -> Identity:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise IdentityError("user", f"no such user {user!r} on this node") from None
    gids = [entry.pw_gid]
    for gid in os.getgrouplist(user, entry.pw_gid):
        if gid not in gids:
            gids.append(gid)
    ident = Identity(user=user, uid=entry.pw_uid, gid=entry.pw_gid, groups=tuple(gids),
                     group_names=tuple(group_name(g) for g in gids))
    return check_identity(ident, min_uid, banned, allowed_users=allowed_users, allowed_groups=allowed_groups)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
