"""Issue 18 item 4: what the node runs comes only from paths that root alone can change.

`supervise --assignments` took a directory of mode 1777 and `/tmp`: another local user wrote a
file there naming a different user, and the node ran that worker as that user, past every tenant
token. One checker (``berth._core.trust.check_trusted``) now serves the node config and the
assignments: the file, and every directory in which a name on the way to it is looked up, with
each symlink followed as the kernel follows it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import ConfigError
from berth._core.trust import check_trusted, untrusted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to other uids; the rule is about root")

WHY = "the node runs what it says"


@pytest.fixture
def trusted() -> Iterator[Path]:
    """A directory only root can change, on a path only root can change (a pytest tmp dir lies
    under /tmp, which anyone may add to)."""
    top = Path("/var/lib/berth-unit")
    top.mkdir(mode=0o755, exist_ok=True)
    os.chmod(top, 0o755)
    d = top / uuid.uuid4().hex[:10]
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d)


def assignments(d: Path) -> Path:
    f = d / "assign.yaml"
    f.write_text("workers: []\n")
    os.chmod(f, 0o644)
    return f


def test_a_root_owned_file_on_a_root_only_path_is_trusted(trusted: Path) -> None:
    f = assignments(trusted)
    assert untrusted(str(f)) == ""
    check_trusted(str(f), "assignments", WHY)
    check_trusted(str(trusted), "assignments", WHY)  # the directory form too


def test_a_directory_of_mode_1777_is_refused(trusted: Path) -> None:
    """The reproduction: a sticky, world-writable assignments directory."""
    d = trusted / "assign.d"
    d.mkdir()
    os.chmod(d, 0o1777)
    with pytest.raises(ConfigError) as info:
        check_trusted(str(d), "assignments", WHY)
    assert info.value.field == "assignments"
    assert info.value.reason == f"{d} is writable by everyone (mode 1777); {WHY}"


def test_tmp_is_refused_sticky_or_not() -> None:
    """A file in /tmp: root's own, but anyone may add the next one (or the one a writer renames into place)."""
    problem = untrusted("/tmp/assign.yaml")
    assert problem.startswith("/tmp is writable by everyone (mode 1777")
    # The node config keeps its old rule: read once at start, a root-owned file in a sticky
    # directory cannot be replaced by others.
    assert untrusted("/tmp", sticky_ok=True) == "/tmp is writable by everyone (mode 1777)"  # the target itself
    assert untrusted("/", sticky_ok=True) == ""


@pytest.mark.parametrize(("owner", "mode", "words"), [
    ((2345, 0), 0o644, "is owned by uid 2345"),
    ((0, 2345), 0o664, "is writable by group 2345"),
    ((0, 0), 0o646, "is writable by everyone"),
    ((0, 0), 0o664, ""),  # group root: root's
])
def test_the_file_itself(trusted: Path, owner: tuple[int, int], mode: int, words: str) -> None:
    f = assignments(trusted)
    os.chown(f, *owner)
    os.chmod(f, mode)
    assert untrusted(str(f)) == (f"{f} {words} (mode {mode:04o})" if words else "")


def test_every_parent_is_checked(trusted: Path) -> None:
    mid = trusted / "etc"
    mid.mkdir()
    f = assignments(mid)
    os.chmod(mid, 0o775)
    os.chown(mid, 0, 2345)
    assert untrusted(str(f)) == f"{mid} is writable by group 2345 (mode 0775)"
    os.chown(mid, 2345, 0)
    os.chmod(mid, 0o755)
    assert untrusted(str(f)) == f"{mid} is owned by uid 2345 (mode 0755)"


def test_each_link_on_the_way_is_followed_and_where_it_lies_is_checked(trusted: Path) -> None:
    """A link in a directory a tenant owns can be re-pointed; so can one in the directory a
    second link leads through (a chain: each hop is a lookup in some directory)."""
    real = trusted / "real"
    real.mkdir()
    assignments(real)
    tenant = trusted / "home-alice"
    tenant.mkdir()
    os.chown(tenant, 2345, 2345)
    hop = tenant / "hop"
    hop.symlink_to(real)
    first = trusted / "first"
    first.symlink_to(hop)  # root's link, in a root-only directory, leading through the tenant's
    assert untrusted(str(first / "assign.yaml")) == f"{tenant} is owned by uid 2345 (mode 0755)"
    (trusted / "direct").symlink_to(real)
    assert untrusted(str(trusted / "direct" / "assign.yaml")) == ""


def test_a_link_into_a_place_others_can_write_is_refused(trusted: Path) -> None:
    """The path as given looks fine; where it leads does not."""
    open_dir = trusted / "drop"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    target = assignments(open_dir)
    link = trusted / "assign.yaml"
    link.symlink_to(target)
    assert untrusted(str(link)) == f"{open_dir} is writable by everyone (mode 0777)"


def test_a_relative_path_and_dot_dot_are_resolved_as_the_kernel_does(trusted: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sub = trusted / "a" / "b"
    sub.mkdir(parents=True)
    f = assignments(trusted / "a")
    open_dir = trusted / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / "in").symlink_to(sub)  # open/in/.. is a, physically; lexically it would be open
    monkeypatch.chdir(trusted)
    assert untrusted("a/assign.yaml") == ""
    assert untrusted("open/in/../assign.yaml") == f"{open_dir} is writable by everyone (mode 0777)"
    assert untrusted(str(f)) == ""


def test_a_missing_path_is_named(trusted: Path) -> None:
    assert untrusted(str(trusted / "nope.yaml")) == f"cannot check {trusted / 'nope.yaml'}: No such file or directory"


def _entry(wid: str, port: int) -> str:
    return f"workers:\n  - {{worker_id: {wid}, topology_id: tt, port: {port}, user: alice, command: [x]}}\n"


def test_assignments_are_checked_again_as_they_are_read(trusted: Path) -> None:
    """A file added by another user, or made writable by others, after start is rejected whole
    (its source keeps its previous workers); the trusted files still apply."""
    from berth._service.assignments import load_assignments

    d = trusted / "assign.d"
    d.mkdir()
    for name, wid, port in (("a.yaml", "wa", 1), ("b.yaml", "wb", 2), ("c.yaml", "wc", 3)):
        (d / name).write_text(_entry(wid, port))
    os.chown(d / "b.yaml", 2345, 2345)  # added by a tenant (root made the directory writable for a moment)
    os.chmod(d / "c.yaml", 0o666)
    out = load_assignments(d, trust=untrusted)
    assert list(out.specs) == ["wa"]
    assert out.broken_sources == {str(d / "b.yaml"), str(d / "c.yaml")}
    assert [(r.source, r.field, r.reason) for r in out.rejected] == [
        (str(d / "b.yaml"), "assignments", f"{d / 'b.yaml'} is owned by uid 2345 (mode 0644)"),
        (str(d / "c.yaml"), "assignments", f"{d / 'c.yaml'} is writable by everyone (mode 0666)")]
    assert list(load_assignments(d).specs) == ["wa", "wb", "wc"]  # unchecked, as a library caller may ask


def test_a_directory_that_became_writable_changes_nothing(trusted: Path) -> None:
    from berth._service.assignments import load_assignments

    d = trusted / "assign.d"
    d.mkdir()
    (d / "a.yaml").write_text(_entry("wa", 1))
    os.chmod(d, 0o1777)
    out = load_assignments(d, trust=untrusted)
    assert out.specs == {} and out.keep_all
    assert [(r.source, r.field) for r in out.rejected] == [(str(d), "assignments")]
    single = assignments(trusted)
    os.chmod(trusted, 0o777)
    out = load_assignments(single, trust=untrusted)
    assert out.keep_all and out.rejected[0].reason == f"{trusted} is writable by everyone (mode 0777)"
    os.chmod(trusted, 0o755)
