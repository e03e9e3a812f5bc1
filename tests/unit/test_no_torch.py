"""The planner and the hardware profiles never import torch, so `headplan plan` runs anywhere."""

import subprocess
import sys


def test_planner_imports_without_torch():
    code = ("import sys\n"
            "import hwprofiles, planner.solver, planner.sweep, planner.render, planner.plots, headplan.cmd_plan\n"
            "from planner.solver import make_plan\n"
            "from planner.builtin_models import BUILTIN_MODELS\n"
            "from hwprofiles import load_profile\n"
            "make_plan(BUILTIN_MODELS['llama-3-8b'], load_profile('rtx-4090'), context_tokens=65536,"
            " decode_tokens=4, gpu_mem_bytes=None)\n"
            "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
