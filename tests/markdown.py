"""Helpers for tests that run the Python blocks of a Markdown file (README, the Go guide)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def python_blocks(path: Path) -> list[str]:
    """Every ```python block of the file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def run_block(path: Path, index: int) -> None:
    """Run block ``index`` of ``path`` as a program of its own; fail with its stderr if it fails."""
    code = python_blocks(path)[index]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{path.name} block {index} failed:\n{code}\n{proc.stderr}"
