"""The README's Python API block runs as written (a renamed function or field breaks it here, not for a user)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(section):], re.S).group(1)


def test_readme_python_api_block_runs_as_written(tmp_path):
    code = readme_block("## Python API for training and export")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    acc, variants, name = res.stdout.strip().splitlines()[-3:]
    assert 0.5 < float(acc) <= 1.0
    assert re.fullmatch(r"\{'fp32': 0\.\d+, 'int8': 0\.\d+\}", variants), variants
    assert name in [str(c) for c in range(10)], name  # mfeat's classes are the digits
    assert (tmp_path / "runs" / "zer" / "metrics.json").exists() and (tmp_path / "bundles" / "zer" / "manifest.json").exists()
    assert "test top-1" not in res.stdout and "epoch" in res.stderr  # the library logs; it does not print
