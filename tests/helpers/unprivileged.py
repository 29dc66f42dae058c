"""Running a check as an unprivileged user. Root writes anywhere, so a test of a read-only
workspace runs its check in a child Python that becomes `nobody` once its imports are done
(CI runs as root); run by anyone else, the child is unprivileged already. The directory the
child works in must be reachable by it: the `reachable_dir` fixture (tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.helpers.processes import ROOT

NOBODY = 65534

# Put in a child's script after its imports: from there on it runs as nobody.
BECOME_NOBODY = f"""
import os
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
"""


def run_as_nobody(script: str, *args: str) -> Any:
    """Run `script` (which prints one JSON value and includes BECOME_NOBODY after its
    imports) with `args` as its argv, from the project's root; what it printed."""
    assert BECOME_NOBODY in script, "the script would run as root"
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
