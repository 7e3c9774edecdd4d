"""A runc worker's files: its bundle over its own root, and what it stands for.

Each worker gets ``<runc dir>/workers/<worker_id>/`` (root-only, never mounted into any worker):
``bundle/config.json`` (the OCI config), ``bundle/rootfs`` (an overlay: the image directory as
the read-only lower layer, ``upper``/``work`` beside it), ``meta.json`` (who it is), and the
files the shim writes (``started.json``, ``exit.json``, ``output.log``). runc creates missing
mount points inside the root, so they land in the worker's upper dir: a launch never writes
into an image's directory, and the root is still mounted read-only for the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from collections.abc import Mapping
from typing import Any

from ..._core.hostfacts import parse_cpu_list
from ..._core.labels import LABEL_NODE, LABEL_PORT, LABEL_SPEC, LABEL_TOPOLOGY, LABEL_USER, LABEL_WORKER, WorkerLabels
from ..._exceptions import EngineError
from .shim import files
from .shim.files import read_json as read_json  # the runc runtime reads its files with the shim's reader

_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if any(c in p for p in (lower, upper, work) for c in ",:\\"):
        raise EngineError("image", f"a path of the overlay contains ',', ':' or '\\': {opts}")
    if _libc.mount(b"overlay", target.encode(), b"overlay", _MS_NOSUID | _MS_NODEV, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise EngineError("image", f"cannot mount the worker's root over {lower}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Detach the worker's root if it is mounted (a missing or unmounted one is fine)."""
    if os.path.ismount(target):
        _libc.umount2(target.encode(), _MNT_DETACH)


def remove_worker_dir(wdir: str) -> None:
    """The worker's runc files; the root is unmounted first, so rmtree never walks the image."""
    unmount(os.path.join(wdir, "bundle", "rootfs"))
    if os.path.ismount(os.path.join(wdir, "bundle", "rootfs")):
        raise EngineError("runc", f"{wdir}/bundle/rootfs is still mounted; not removing it")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(wdir)


def write_json(path: str, data: Mapping[str, Any], mode: int = 0o600, *, durable: bool = True) -> None:
    """berth's own files of a runc worker (its bundle, meta): the shim's writer, readable by root only."""
    files.write_json(path, data, mode, durable=durable)


def request_from_oci(config: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a runc container stands for: ids and user from its annotations, its
    image, and the resources runc was given, rounded up to the request's units."""
    fields: dict[str, Any] = WorkerLabels.decode(config.get("annotations") or {}).request()
    res = (config.get("linux") or {}).get("resources") or {}
    cpu, mem, pids = res.get("cpu") or {}, res.get("memory") or {}, res.get("pids") or {}
    if cpu.get("quota") and cpu.get("period") and int(cpu["quota"]) > 0:
        fields["cpu_percent"] = -(-int(cpu["quota"]) * 100 // int(cpu["period"]))
    if mem.get("limit") and int(mem["limit"]) > 0:
        fields["memory_mb"] = -(-int(mem["limit"]) // (1024 * 1024))
    if pids.get("limit") and int(pids["limit"]) > 0:
        fields["pids_limit"] = int(pids["limit"])
    if cpu.get("cpus"):
        fields["cores"] = tuple(sorted(parse_cpu_list(cpu["cpus"])))
    mems = parse_cpu_list(cpu.get("mems") or "")
    if len(mems) == 1:
        fields["numa_node"] = next(iter(mems))
    return fields


def labels_of(config: Mapping[str, Any]) -> dict[str, str]:
    ann = config.get("annotations") or {}
    keys = (LABEL_WORKER, LABEL_TOPOLOGY, LABEL_PORT, LABEL_USER, LABEL_NODE, LABEL_SPEC)
    return {k: str(ann[k]) for k in keys if k in ann}
