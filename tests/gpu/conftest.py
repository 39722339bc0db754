import subprocess

import pytest

from tests.gpu.serving import gpu_unavailable


def pytest_collection_modifyitems(config, items):
    reason = gpu_unavailable()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def start_launcher(recipe: str, port: int, log_dir, *overrides: str):
    """`python -m launch RECIPE` in a subprocess; returns (process, its output lines, seconds to ready)."""
    import sys
    import time

    from tests.conftest import REPO

    sets = [arg for item in (f"port={port}", *overrides) for arg in ("--set", item)]
    started = time.monotonic()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launch", recipe, *sets, "--log-dir", str(log_dir), "--timeout", "600"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "ready" in line and "at http://" in line:
            return launcher, lines, time.monotonic() - started
    pytest.fail("launcher exited before the server was ready:\n" + "".join(lines[-40:]))
