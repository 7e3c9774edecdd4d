"""Issue 18 item 10: what others wrote reaches the operator's terminal escaped.

`berth cluster ps` printed node-supplied fields raw, so escape sequences (clear the screen, set
the window title, rewrite the line before) reached the operator's terminal. Every place berth
prints data it did not write goes through one helper, ``berth._core.printable.printable``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from berth._cli import main
from berth._cli.app import escape_logs
from berth._cli.cluster_views import cluster_tables
from berth._cli.views import ps_table, rejection_line
from berth._core.printable import printable

EVIL = "w\x1b[2J\x1b]0;pwned\x07\r\u202eevil\nok: fine"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, ünïcode and spaces", "plain text, ünïcode and spaces"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
    ("\x07\x08\x7f\x9b", "\\x07\\x08\\x7f\\x9b"),             # BEL, BS, DEL, the 8-bit CSI
    ("\u202eabc\u2066", "\\u202eabc\\u2066"),                 # bidi overrides ("Trojan source")
    ("line\u2028sep", "line\\u2028sep"),
    ("\udcff", "\\udcff"),                                    # a byte that was not UTF-8 (surrogateescape)
    ("[bold]markup[/]", "[bold]markup[/]"),                   # not terminal control: kept (tables print it as text)
])
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def _render(table: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=400, force_terminal=False, color_system=None).print(table)
    return out.getvalue()


def _row(**kw: Any) -> dict[str, Any]:
    row = {"worker_id": "w1", "topology_id": "t", "port": 6700, "user": "u", "image": "i", "state": "running",
           "exit_code": None, "oom_killed": False, "oom_victim": None, "main_stopped": False, "memory_bytes": None,
           "started_at": None, "finished_at": None, "uptime": "-", "how": None}
    return {**row, **kw}


class _Node:
    class config:
        class node:
            name = "n\x1b[1m1"


def test_ps_prints_cells_escaped_and_never_as_markup() -> None:
    rows = [_row(worker_id=EVIL, topology_id="[red]t[/]", supervisor_state="failed", last_error="[/]" + EVIL,
                 restarts=0, failures=1, next_start_in_s=None, last_exit=None)]
    text = _render(ps_table(_Node(), rows))  # type: ignore[arg-type]
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\r" not in text
    assert "\\x1b[2J" in text and "[red]t[/]" in text and "n\\x1b[1m1" in text
    line = rejection_line({"source": "/etc/berth/a.d/\x1b[2J.yaml", "index": None, "worker_id": None,
                           "field": "assignments", "reason": EVIL})
    assert "\x1b" not in line and "\n" not in line and line.startswith("rejected: /etc/berth/a.d/\\x1b[2J.yaml")


def test_cluster_ps_prints_what_nodes_wrote_escaped() -> None:
    """The reproduction: a node's registration and state are the node's to write."""
    nodes = [{"node": "n1", "live": True, "host": EVIL, "capacity": {"cpu_percent": 200, "memory_mb": 1024,
                                                                     "ports": 2, "zones": 0},
              "used": {"cpu_percent": 0, "memory_mb": 0, "ports": 0}, "document": "0x1", "applied": EVIL,
              "reason": EVIL, "workers": 0, "running": 0, "fenced": False, "problems": [EVIL],
              "orphans": [EVIL], "draining": EVIL}]
    workers = [{"node": "n1", "worker_id": "w1", "topology_id": "t", "port": 6700, "user": "u", "cpu_percent": 1,
                "memory_mb": 1, "numa_node": None, "state": EVIL, "restarts": 0, "engine": EVIL, "orphan": False,
                "note": EVIL}]
    text = "".join(_render(t) for t in cluster_tables(nodes, workers))
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert text.count("\\x1b]0;pwned\\x07") >= 4


def test_an_error_quoting_a_name_is_one_escaped_line(tmp_path: Path) -> None:
    cfg = tmp_path / "\x1b[2Jx\nerror: none.toml"
    r = CliRunner().invoke(main, ["--config", str(cfg), "ps"])
    assert r.exit_code == 125
    assert r.output.count("\n") == 1 and "\x1b" not in r.output
    assert r.output.startswith(f"error: config: cannot read {tmp_path}/\\x1b[2Jx\\nerror: none.toml")


def test_log_lines_are_escaped() -> None:
    """The supervisor logs rejections and errors quoting names from assignment files, the API and
    the engine; its log is read on a terminal too."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    escape_logs(handler)
    log = logging.getLogger("berth.test-printable")
    log.addHandler(handler)
    try:
        log.warning("%s: assignment rejected: %s", "w\x1b[2J", EVIL)
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == f"WARNING w\\x1b[2J: assignment rejected: {printable(EVIL)}\n"
