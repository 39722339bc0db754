"""tests/gpu/run_on_device.sh --collect, on a CPU: what a GPU call brings back of its detached jobs."""

import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).parent / "gpu" / "run_on_device.sh"


def test_collect_reports_each_job_and_brings_back_results_but_no_weights_or_kernels(tmp_path: Path) -> None:
    prefix, jobs, out = tmp_path / "prefix", tmp_path / "jobs", tmp_path / "out"
    prefix.mkdir()
    (prefix / ".part-a.done").touch()
    (prefix / ".part-b.done").touch()  # the bundle counts as installed
    files = {"done/log": "line 1\nPASS: 2 cases\n", "done/exit": "0\n", "done/out/rehearse.json": "[]\n",
             "done/out/checkpoints/model.safetensors": "weights", "done/out/conformance/ref.safetensors": "weights",
             "done/out/triton-cache/abc/kernel.cubin": "kernel", "done/repo/README.md": "a copy of the repository",
             "running/log": "capturing prefill CUDA graphs 12/58\n"}  # fmt: skip
    for name, text in files.items():
        (jobs / name).parent.mkdir(parents=True, exist_ok=True)
        (jobs / name).write_text(text)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SGL_PREFIX": str(prefix), "GPU_JOBS": str(jobs), "OUT": str(out)}
    done = subprocess.run(["bash", str(SCRIPT), "--collect"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "== done: exit 0" in done.stdout and "PASS: 2 cases" in done.stdout
    assert "== running: running" in done.stdout and "capturing prefill CUDA graphs 12/58" in done.stdout
    with tarfile.open(out / "jobs.tgz") as archive:
        kept = {Path(name).as_posix().removeprefix("./") for name in archive.getnames()}
    assert {"done/log", "done/exit", "done/out/rehearse.json", "running/log"} <= kept
    assert not [name for name in kept if name.endswith(".safetensors") or "triton-cache" in name or "/repo" in name]
