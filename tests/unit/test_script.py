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
    script = render_script(["java", "-cp", "a b", "it's"], {"A": "1", "B": "x'y"}, "0027")
    assert script == (
        "#!/bin/bash\n"
        "'export' 'A=1';\n"
        "'export' 'B=x'\"'\"'y';\n"
        "\n"
        "umask 0027\n"
        "exec 'java' '-cp' 'a b' 'it'\"'\"'s';\n"
    )


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
