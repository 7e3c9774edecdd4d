"""Removing a worker's tree: no recursion, one descriptor at a time, never through a link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from berth._exceptions import CleanupError
from berth._node import workdirs
from berth._node.workdirs import remove_tree


def _deep(top: Path, depth: int) -> Path:
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):  # below PATH_MAX only through descriptors, as a worker would do it
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as fh:
            fh.write("x")
    finally:
        os.close(fd)
    return top


def test_a_tree_deeper_than_the_stack_and_the_descriptor_limit_is_removed(tmp_path: Path) -> None:
    top = _deep(tmp_path / "root", 5000)
    # In a child with 32 descriptors and Python's default recursion limit: neither may be spent per level.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)); "
            "from berth._node.workdirs import remove_tree; remove_tree(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(top)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not top.exists()


def test_links_are_unlinked_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "file").write_text("keep")
    (outside / "sub" / "file").write_text("keep too")
    top = tmp_path / "root"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "to-outside").symlink_to(outside)
    (top / "a" / "to-file").symlink_to(outside / "file")
    (top / "a" / "dangling").symlink_to(tmp_path / "nothing")
    os.link(outside / "file", top / "a" / "b" / "hard")
    os.mkfifo(top / "a" / "fifo")
    (top / "a" / "ro").mkdir()
    (top / "a" / "ro" / "f").write_text("x")
    os.chmod(top / "a" / "ro", 0o500)
    remove_tree(top)
    assert not os.path.lexists(top)
    assert (outside / "file").read_text() == "keep" and (outside / "sub" / "file").read_text() == "keep too"
    assert os.stat(outside / "file").st_nlink == 1


def test_the_top_itself_being_a_link_is_unlinked(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("keep")
    (tmp_path / "root").symlink_to(outside)
    remove_tree(tmp_path / "root")
    assert not os.path.lexists(tmp_path / "root") and (outside / "file").read_text() == "keep"


def test_a_wide_tree_is_removed_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "root"
    for i in range(50):
        (top / f"d{i}" / "sub").mkdir(parents=True)
        (top / f"d{i}" / "file").write_text("x")
    scans: list[int] = []
    real = workdirs._scan

    def counting(fd: int, dev: int, shown: str, depth: int, limit: int,
                 deadline: float | None = None) -> list[tuple[str, os.stat_result]]:
        scans.append(depth)
        return real(fd, dev, shown, depth, limit, deadline)

    monkeypatch.setattr(workdirs, "_BATCH", 16)
    monkeypatch.setattr(workdirs, "_scan", counting)
    remove_tree(top)
    assert not top.exists()
    assert scans.count(1) == 5  # 50 subdirectories, 16 a scan (then the scan that finds it empty)


def test_a_missing_tree_is_not_an_error(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")
    remove_tree(tmp_path / "absent-parent" / "absent")


def test_a_directory_moved_out_during_the_walk_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "root"
    (top / "a" / "b" / "c").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    real = workdirs._scan

    def move_while_inside(fd: int, dev: int, shown: str, depth: int, limit: int,
                          deadline: float | None = None) -> list[tuple[str, os.stat_result]]:
        if depth == 4 and (top / "a" / "b").exists():  # inside c: move b (and c with it) away
            os.rename(top / "a" / "b", elsewhere / "b")
        return real(fd, dev, shown, depth, limit, deadline)

    monkeypatch.setattr(workdirs, "_scan", move_while_inside)
    with pytest.raises(CleanupError) as info:
        remove_tree(top)
    assert info.value.field == "directories" and "moved while it was being removed" in info.value.reason
    assert (elsewhere / "precious").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_an_unremovable_entry_is_a_cleanup_error(tmp_path: Path) -> None:
    top = tmp_path / "root"
    (top / "a").mkdir(parents=True)
    (top / "a" / "stuck").write_text("x")
    if subprocess.run(["chattr", "+i", str(top / "a" / "stuck")], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(CleanupError) as info:
            remove_tree(top)
        assert str(info.value).startswith(f"directories: cannot remove {top}: Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(top / "a" / "stuck")], check=True)
    remove_tree(top)
    assert not top.exists()
