"""A Docker-format seccomp profile as the OCI ``linux.seccomp`` object runc takes.

The Docker format (moby's ``default.json``, the Debian ``containers-common`` profile) is a
superset of the OCI one: rules carry ``includes``/``excludes`` conditions on the architecture,
the container's capabilities and the kernel version, and ``archMap`` lists each native
architecture with its compatible ones. The engine resolves those conditions for the container
it is about to start; runc does not, so berth resolves them here, the same way, for a worker
whose bounding set is empty (berth drops every capability): a rule that *includes* a
capability is dropped, a rule that *excludes* one is kept.

Pure: the architecture, kernel release and capabilities are arguments.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._core.docfile import read_bytes
from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._core.config import NodeConfig

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "x86", "i386": "x86", "armv7l": "arm",
           "ppc64le": "ppc64le", "s390x": "s390x", "mips64": "mips64", "riscv64": "riscv64"}
"""``uname -m`` to the arch names the profiles use in ``includes.arches`` (Go's, as the engine's)."""
SECCOMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86", "arm64": "SCMP_ARCH_AARCH64",
                "arm": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
                "mips64": "SCMP_ARCH_MIPS64", "riscv64": "SCMP_ARCH_RISCV64"}
_ARG_KEYS = ("index", "value", "valueTwo", "op")
MAX_PROFILE_BYTES = 4 * 1024 * 1024


def _kernel(release: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return tuple(int(x or 0) for x in m.groups())


def _applies(rule: Mapping[str, Any], arch: str, caps: frozenset[str], kernel: tuple[int, ...]) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if arch in (exc.get("arches") or ()):
        return False
    if any(c in caps for c in exc.get("caps") or ()):
        return False
    if exc.get("minKernel") and kernel >= _kernel(exc["minKernel"]):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps") or ()):
        return False
    return not (inc.get("minKernel") and kernel < _kernel(inc["minKernel"]))


def _syscall(rule: Mapping[str, Any], where: str) -> dict[str, Any]:
    if rule.get("name") and rule.get("names"):
        raise ValueError(f"{where}: both 'name' and 'names'")
    names = [rule["name"]] if rule.get("name") else list(rule.get("names") or [])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where}: no syscall names")
    if not isinstance(rule.get("action"), str):
        raise ValueError(f"{where}: no action")
    out: dict[str, Any] = {"names": names, "action": rule["action"]}
    if rule.get("errnoRet") is not None:
        out["errnoRet"] = int(rule["errnoRet"])
    args = []
    for arg in rule.get("args") or []:
        missing = [k for k in ("index", "value", "op") if k not in arg]
        if missing:
            raise ValueError(f"{where}: an argument lacks {', '.join(missing)}")
        args.append({k: arg[k] for k in _ARG_KEYS if k in arg})
    if args:
        out["args"] = args
    return out


def oci_seccomp(profile: Mapping[str, Any], *, arch: str | None = None, kernel_release: str | None = None,
                caps: Sequence[str] = (), compat_arches: bool = True) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` for a Docker-format (or OCI-format) profile.

    ``arch`` is the Go arch name (default: this machine's); ``caps`` the container's bounding
    set (berth's workers: none). Without ``compat_arches`` only the native architecture of the
    ``archMap`` entry is kept: system calls of the others (32-bit ones) are then refused.
    Raises ValueError naming the offending rule.
    """
    arch = arch or GO_ARCH.get(platform.machine(), platform.machine())
    kernel = _kernel(kernel_release or platform.release())
    cap_set = frozenset(caps)
    if not isinstance(profile.get("defaultAction"), str):
        raise ValueError("no defaultAction")
    if profile.get("architectures") and profile.get("archMap"):
        raise ValueError("both 'architectures' and 'archMap'")
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    arches = list(profile.get("architectures") or [])
    native = SECCOMP_ARCH.get(arch)
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            arches = [native, *(entry.get("subArchitectures") or [])] if compat_arches else [native]
            break
    if arches:
        out["architectures"] = arches
    syscalls = []
    for i, rule in enumerate(profile.get("syscalls") or []):
        where = f"syscalls[{i}]"
        if not isinstance(rule, Mapping):
            raise ValueError(f"{where}: not an object")
        if _applies(rule, arch, cap_set, kernel):
            syscalls.append(_syscall(rule, where))
    out["syscalls"] = syscalls
    return out


CLONE_NAMESPACES = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                    "CLONE_NEWNET": 0x40000000}
NAMESPACE_CALLS = ("unshare", "setns", "keyctl", "add_key", "request_key")
"""Denied (EPERM) by :func:`hardened`, as the engine's default profile denies them to a
container without CAP_SYS_ADMIN: new namespaces (a user namespace gives its creator every
capability inside it, and so the kernel code behind them) and the kernel keyring, which is not
namespaced. Debian's containers-common profile allows them (podman relies on capabilities)."""
IO_URING_CALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")
"""Denied (EPERM) by :func:`hardened`: a ring performs reads, writes, opens and connects that no
seccomp filter sees, and its kernel code has been a steady source of privilege escalations. The
engine's default profile allowed them until moby 25; berth gives the engine its own filter."""
_EPERM, _ENOSYS = 1, 38


def hardened(oci: Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
    """``oci`` with clone's namespace flags, clone3, unshare, setns, the keyring calls and io_uring
    refused, whatever its allow rules say: berth's workers have no capabilities, make no
    namespaces, and do not get a second system call interface past the filter.

    clone3 answers ENOSYS (its flags are in memory a filter cannot read), so the C library falls
    back to clone, whose flags are filtered: allowed without namespace flags, EPERM with any.
    """
    arch = arch or GO_ARCH.get(platform.machine(), platform.machine())
    index = 1 if arch in ("s390", "s390x") else 0  # clone's flags are its second argument there
    denied = {"clone", "clone3", *NAMESPACE_CALLS, *IO_URING_CALLS}
    rules = []
    for rule in oci.get("syscalls") or []:
        names = [n for n in rule["names"] if n not in denied]
        if names:
            rules.append({**rule, "names": names})
    mask = sum(CLONE_NAMESPACES.values())
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": index, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    rules += [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM,
               "args": [{"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
              for flag in CLONE_NAMESPACES.values()]
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS})
    rules.append({"names": list(NAMESPACE_CALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM})
    rules.append({"names": list(IO_URING_CALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM})
    return {**oci, "syscalls": rules}


def read_profile(path: str, field: str) -> bytes:
    """The bytes of a profile file, for the engine (which takes them inline) and for runc (after
    ``oci_seccomp``); bounded, and a ConfigError naming ``field`` when unreadable."""
    return read_bytes(path, field, ConfigError, MAX_PROFILE_BYTES, what="the seccomp profile")


def load_oci_seccomp(path: str, field: str, **kw: Any) -> dict[str, Any]:
    """Read and convert a profile file; a bad one is a ConfigError naming ``field``."""
    data = read_profile(path, field)
    try:
        profile = json.loads(data)
        if not isinstance(profile, dict):
            raise ValueError("not a JSON object")
        return oci_seccomp(profile, **kw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(field, f"{path} is not a usable seccomp profile: {exc}") from exc


class Filters:
    """The filters a node's workers get, each converted once per version of its file (a conversion
    takes milliseconds; a launch only looks at the file's mtime).

    The operator's profile (``container.seccomp_profile``) is used as it is. Without one, both
    runtimes get berth's own: ``runc.default_seccomp`` (Debian's containers-common profile, which
    the engine's default derives from) converted for a worker without capabilities and
    :func:`hardened`, so a docker worker and a runc worker are refused the same system calls.
    """

    DEFAULT_FIELD = "runc.default_seccomp"

    def __init__(self, default_path: str, compat_arches: bool = False) -> None:
        self.default_path, self.compat_arches = default_path, compat_arches
        self._cache: dict[str, tuple[float, dict[str, Any], str]] = {}

    @classmethod
    def of(cls, config: NodeConfig) -> Filters:
        from .runc.config import RuncSection  # berth's default filter is set in [runc]; both runtimes use it

        runc = RuncSection.of(config)
        return cls(runc.default_seccomp, runc.seccomp_compat_arches)

    def _load(self, path: str, field: str, harden: bool) -> tuple[dict[str, Any], str]:
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            hint = "" if field != self.DEFAULT_FIELD else " (Debian: apt-get install golang-github-containers-common)"
            raise ConfigError(field, f"{field} = {path}: {exc.strerror}{hint}") from exc
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            converted = load_oci_seccomp(path, field, compat_arches=self.compat_arches)
            if harden:
                converted = hardened(converted)
            cached = (mtime, converted, json.dumps(converted, separators=(",", ":")))
            self._cache[path] = cached
        return cached[1], cached[2]

    def oci(self, profile: str | None) -> dict[str, Any]:
        """The OCI ``linux.seccomp`` for runc: the operator's ``profile`` converted, else berth's."""
        if profile:
            return self._load(profile, "container.seccomp_profile", harden=False)[0]
        return self._load(self.default_path, self.DEFAULT_FIELD, harden=True)[0]

    def default_json(self) -> str:
        """berth's filter as the JSON text the engine takes in ``SecurityOpt`` (the engine reads
        the OCI form: ``architectures`` and rules without conditions)."""
        return self._load(self.default_path, self.DEFAULT_FIELD, harden=True)[1]
