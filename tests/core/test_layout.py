"""Import discipline: the runtime never needs torch; --help starts without the stages."""

from __future__ import annotations

import subprocess
import sys


def test_runtime_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import cmcd_edge.runtime"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_does_not_import_torch_or_onnxruntime():
    code = ("import sys; from click.testing import CliRunner; from cmcd_edge.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stage_packages_map_to_top_level_folders():
    import cmcd_edge.calib
    import cmcd_edge.distill
    import cmcd_edge.export
    import cmcd_edge.runtime

    for mod, folder in ((cmcd_edge.distill, "distill"), (cmcd_edge.calib, "calib"),
                        (cmcd_edge.export, "export"), (cmcd_edge.runtime, "runtime")):
        assert mod.__file__.replace("\\", "/").endswith(f"/{folder}/__init__.py")
