"""The public library API: every listed name resolves, and importing the package stays light."""

import subprocess
import sys

import toolkit

from helpers import REPO


def test_every_public_name_resolves():
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name
    assert {"run", "tune", "tune_distributed", "compare", "diagnose", "gradient_check", "run_suite"} <= set(
        toolkit.__all__)


def test_import_toolkit_does_not_import_tensorflow():
    code = "import sys, toolkit; toolkit.compare; toolkit.diagnose; sys.exit('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
