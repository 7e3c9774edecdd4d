"""The README's Python example runs as written, against the real engine (it is the API's promise)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT, SOCKET

pytestmark = pytest.mark.integration


def test_the_readme_python_example_runs_as_written(engine: str, users: object) -> None:
    text = (ROOT / "README.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", text, re.S)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DOCKER_HOST": SOCKET})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exit code 0"
