import importlib.util
import shutil
import subprocess

import pytest


def _gpu_reason() -> str | None:
    if shutil.which("nvidia-smi") is None and shutil.which("rocm-smi") is None:
        return "no GPU on this machine"
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (tests/gpu/run_on_device.sh installs the offline bundle)"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    if probe is not None and probe.returncode != 0:
        return f"nvidia-smi sees no GPU: {probe.stderr.strip()}"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _gpu_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
