"""Run import-linter on the package as it installs (the stage folders mapped under cmcd_edge).

grimp walks the root package's folder on disk, so it cannot see the package-dir mapping of an editable install;
this stages the .py files as the wheel lays them out and lints that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"cmcd_edge": "cmcd_edge", "cmcd_edge/distill": "distill", "cmcd_edge/calib": "calib",
           "cmcd_edge/export": "export", "cmcd_edge/runtime": "runtime"}


def main() -> int:
    with tempfile.TemporaryDirectory() as stage:
        for dest, src in MAPPING.items():
            (Path(stage) / dest).mkdir(parents=True, exist_ok=True)
            for py in (ROOT / src).glob("*.py"):
                shutil.copy2(py, Path(stage) / dest / py.name)
        shutil.copy2(ROOT / "pyproject.toml", Path(stage) / "pyproject.toml")  # found in the cwd by every version
        env = {**os.environ, "PYTHONPATH": stage}
        lint = Path(sys.executable).with_name("lint-imports")
        return subprocess.run([str(lint)], env=env, cwd=stage).returncode


if __name__ == "__main__":
    sys.exit(main())
