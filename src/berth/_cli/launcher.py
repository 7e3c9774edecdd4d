"""``berth worker-launcher install``: put ``berth-worker-launcher`` where Storm's
``supervisor.worker.launcher`` can name it, as a plain program (docs/storm.md).

The program is one standard-library file (``berth_launcher``), so it is written out whole with the
node's own Python (``-IS``: no environment, no site packages) rather than run from berth's
install, which Storm's supervisor user may not be able to read (a virtualenv under root's home).
Whoever could rewrite it would act as Storm's supervisor towards berth, so it is root's alone to
write, as Storm requires of its own launcher's configuration; and it is never setuid.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from .._core.trust import check_root_owned
from .._exceptions import ConfigError
from .app import get_config, main

SYSTEM_PYTHON = "/usr/bin/python3"


def program_text(python: str, socket: str | None = None) -> str:
    """The program: a shebang for ``python``, the ``berth_launcher`` module as it is, and the
    socket it asks (Storm's supervisor runs it with its own environment, often none)."""
    import berth_launcher

    source = Path(berth_launcher.__file__).read_text(encoding="utf-8")
    where = f"DEFAULT_SOCKET = {socket!r}  # berth worker-launcher install --socket\n" if socket else ""
    return f"#!{python} -IS\n{source}\n{where}\nif __name__ == \"__main__\":\n    sys.exit(main())\n"


def install_program(dest: str, python: str | None = None, socket: str | None = None) -> str:
    """Write the program at ``dest`` (mode 0755, replaced atomically), asking berth on ``socket``
    (default: the program's own, ``/run/berth/api.sock``); returns the Python it names."""
    if not os.path.isabs(dest):
        raise ConfigError("dest", f"must be an absolute path, got {dest!r}")
    if socket is not None and (not os.path.isabs(socket) or "\n" in socket):
        raise ConfigError("socket", f"must be an absolute path, got {socket!r}")
    python = python or (SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable)
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise ConfigError("python", f"{python!r} is not an executable absolute path")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise ConfigError("dest", f"{parent} is not a directory")
    if os.path.lexists(dest) and (os.path.islink(dest) or not os.path.isfile(dest)):
        raise ConfigError("dest", f"{dest} exists and is not a plain file; not replaced")
    tmp = f"{dest}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(program_text(python, socket))
            os.fchmod(fh.fileno(), 0o755)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    check_root_owned(dest, "dest", "the worker-launcher Storm runs")
    return python


@main.group("worker-launcher")
def worker_launcher() -> None:
    """berth-worker-launcher: Storm's worker-launcher without setuid (docs/storm.md)."""


@worker_launcher.command("install")
@click.argument("dest", default="/usr/local/bin/berth-worker-launcher")
@click.option("--python", help=f"The Python it runs with (default {SYSTEM_PYTHON}, else berth's own).")
@click.option("--socket", "socket_path", help="berth's API socket it asks (default: the API socket of this "
              "node's config when one is given, else /run/berth/api.sock; $BERTH_SOCKET overrides it).")
@click.pass_context
def install(ctx: click.Context, dest: str, python: str | None, socket_path: str | None) -> None:
    """Write the program at DEST, for storm.yaml's supervisor.worker.launcher."""
    if socket_path is None and ctx.find_root().obj.get("config_path"):
        socket_path = get_config(ctx).api_socket
    used = install_program(dest, python, socket_path)
    click.echo(f"installed {dest} (mode 0755, not setuid; runs with {used}; asks berth on "
               f"{socket_path or '/run/berth/api.sock'})")
    click.echo(f"storm.yaml: supervisor.worker.launcher: \"{dest}\"  (with supervisor.run.worker.as.user: true)")
