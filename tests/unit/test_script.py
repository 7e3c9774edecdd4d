"""The worker script: Storm's format, and a byte-exact round trip through sh and bash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth._core.script import quote, render_script

DUMPER = ("import json, os, sys; "
          "json.dump({'argv': [os.fsencode(a).hex() for a in sys.argv[1:]], "
          "'env': {k: os.fsencode(v).hex() for k, v in os.environ.items() if k.startswith('B')}}, "
          "sys.stdout)")


def test_script_format_is_storms() -> None:
    """[10] ServerUtils.writeScript (storm-server, apache/storm 73da988d9ac3): "#!/bin/bash", newLine;
    per variable shellCmd(["export", k + "=" + v]) + ";" and newLine; a newLine; "umask " + umask and
    newLine; "exec " + shellCmd(command) + ";" with no newLine after it. shellCmd: each token in
    single quotes, a quote as '"'"'."""
    script = render_script(["java", "-cp", "a b", "it's"], {"A": "1", "B": "x'y"}, "0027")
    assert script == (
        "#!/bin/bash\n"
        "'export' 'A=1';\n"
        "'export' 'B=x'\"'\"'y';\n"
        "\n"
        "umask 0027\n"
        "exec 'java' '-cp' 'a b' 'it'\"'\"'s';"
    )


def test_env_lines_keep_the_requests_order() -> None:
    """[10] Storm writes its HashMap's order; berth writes the request's, so the same request gives the
    same script, byte for byte, every time."""
    from berth import WorkerSpec
    from berth._core.spec import spec_from_mapping

    env = {"ZED": "1", "ALPHA": "2", "MID": "3"}
    spec = spec_from_mapping({"worker_id": "w1", "topology_id": "t1", "port": 6700, "user": "alice",
                              "command": ["x"], "env": env})
    assert isinstance(spec, WorkerSpec)
    script = render_script(spec.command, spec.env, None)
    assert script.splitlines()[1:4] == ["'export' 'ZED=1';", "'export' 'ALPHA=2';", "'export' 'MID=3';"]


def test_quote_refuses_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote("a\0b")


def _run(shell: str, script: str, tmp: Path) -> dict[str, object]:
    path = tmp / "s.sh"
    path.write_bytes(script.encode("utf-8"))
    out = subprocess.run([shell, str(path)], capture_output=True, env={"PATH": "/usr/bin:/bin"},
                         check=True, cwd=tmp)
    result: dict[str, object] = json.loads(out.stdout)
    return result


text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)
names = st.from_regex(r"B[A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda n: not n.startswith("BASH"))


@pytest.mark.parametrize("shell", ["sh", "bash"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(text, max_size=6), env=st.dictionaries(names, text, max_size=5))
def test_any_argv_and_env_reach_the_worker_byte_for_byte(
        shell: str, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    script = render_script([sys.executable, "-c", DUMPER, *args], env, "0027")
    got = _run(shell, script, tmp_path)
    assert got["argv"] == [a.encode().hex() for a in args]
    assert got["env"] == {k: v.encode().hex() for k, v in env.items()}


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_hostile_tokens_survive(shell: str, tmp_path: Path) -> None:
    hostile = ["$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "a\nb", "\\", "!!", "*", "~",
               "$HOME", '"', "\t", "é ünï 漢字 🚀", "-", "--", ""]
    env = {"B1": "$(touch pwned)", "B2": "line1\nline2", "B3": "'"}
    got = _run(shell, render_script([sys.executable, "-c", DUMPER, *hostile], env, None), tmp_path)
    assert got["argv"] == [a.encode().hex() for a in hostile]
    assert got["env"] == {k: v.encode().hex() for k, v in env.items()}
    assert not (tmp_path / "pwned").exists()
