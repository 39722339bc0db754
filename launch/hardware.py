"""What this machine has (GPUs, their architecture and memory; SGLang) and whether a recipe fits it.

GPUs are read from `nvidia-smi`, then `rocm-smi`, then torch, so that a report costs no CUDA/HIP
initialisation where the vendor tool is present.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from launch.recipe import HardwareSpec, Recipe
from launch.sglang_options import installed_sglang_version

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    vendor: str  # nvidia | amd
    name: str
    arch: str  # sm90, sm120, gfx950, ...
    memory_gib: float


@dataclass(frozen=True)
class Machine:
    gpus: list[Gpu] = field(default_factory=list)
    gpu_source: str = "none"
    sglang_version: str | None = None
    python: str = sys.executable

    def summary(self) -> str:
        if not self.gpus:
            return f"no GPU found (checked nvidia-smi, rocm-smi, torch); SGLang: {self.sglang_version or 'not installed'}"
        kinds: dict[str, int] = {}
        for gpu in self.gpus:
            label = f"{gpu.name} ({gpu.arch}, {gpu.memory_gib:.0f} GiB)"
            kinds[label] = kinds.get(label, 0) + 1
        gpus = ", ".join(f"{n}× {label}" for label, n in kinds.items())
        return f"{gpus} [via {self.gpu_source}]; SGLang: {self.sglang_version or 'not installed'}"


def parse_nvidia_smi(csv_text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv_text.strip().splitlines():
        name, memory_mib, compute_cap = (part.strip() for part in line.rsplit(",", 2))
        major, _, minor = compute_cap.partition(".")
        gpus.append(Gpu("nvidia", name, f"sm{major}{minor}", float(memory_mib) / 1024))
    return gpus


def parse_rocm_smi(json_text: str) -> list[Gpu]:
    """`rocm-smi --showproductname --showmeminfo vram --json`; key spelling differs across ROCm releases."""
    gpus = []
    for card, info in sorted(json.loads(json_text).items()):
        if not card.startswith("card"):
            continue
        fields = {k.lower(): v for k, v in info.items()}
        name = fields.get("card series") or fields.get("card model") or card
        arch = fields.get("gfx version", "unknown")
        memory = float(fields.get("vram total memory (b)", 0)) / GIB
        gpus.append(Gpu("amd", name, arch, memory))
    return gpus


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _torch_gpus() -> list[Gpu]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        if torch.version.hip:
            gpus.append(Gpu("amd", props.name, props.gcnArchName.split(":")[0], props.total_memory / GIB))
        else:
            gpus.append(Gpu("nvidia", props.name, f"sm{props.major}{props.minor}", props.total_memory / GIB))
    return gpus


def detect() -> Machine:
    sglang = installed_sglang_version()
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"])
    if out and out.strip():
        return Machine(parse_nvidia_smi(out), "nvidia-smi", sglang)
    out = _run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"])
    if out and out.strip():
        return Machine(parse_rocm_smi(out), "rocm-smi", sglang)
    gpus = _torch_gpus()
    return Machine(gpus, "torch" if gpus else "none", sglang)


def gpus_needed(recipe: Recipe, replicas_per_gpu: int = 1) -> tuple[int, str]:
    """GPUs this host needs for the recipe as it will run (its server arguments after --set and --stand-in,
    not the card's `hardware.gpu_count`), with `replicas_per_gpu` replicas sharing each GPU (each set of
    GPUs a replica's parallelism takes), and how they were counted."""
    size, layout = recipe.parallelism, recipe.topology
    counted = f"tp {size['tp']} × pp {size['pp']} × dp {size['dp']}"
    if layout.nodes > 1:
        counted += f" over {layout.nodes} hosts"
    if layout.replicas > 1:
        counted += f", {layout.replicas} replicas"
    if replicas_per_gpu > 1:
        counted += f", {replicas_per_gpu} per GPU" if recipe.gpus_per_host == 1 else f", {replicas_per_gpu} per {recipe.gpus_per_host} GPUs"
    return recipe.gpus_per_host * -(-layout.replicas // replicas_per_gpu), counted


def suitable(spec: HardwareSpec, machine: Machine) -> list[Gpu]:
    """The GPUs of `machine` a recipe needing `spec` can use: its vendor, an accepted architecture, enough memory."""
    return [g for g in machine.gpus if spec.vendor in ("any", g.vendor) and (not spec.archs or g.arch in spec.archs)
            and g.memory_gib >= spec.min_memory_gib]  # fmt: skip


def misfits(spec: HardwareSpec, machine: Machine, gpus: tuple[int, str] | None = None) -> list[str]:
    """Why `machine` cannot serve a recipe needing `spec` (empty: it fits) on `gpus` GPUs (count, how it was
    counted; default the spec's own GPU count)."""
    gpus_needed, counted = gpus or (spec.gpu_count, "")
    if not machine.gpus:
        return ["no GPU found"]
    usable = [g for g in machine.gpus if spec.vendor in ("any", g.vendor)]
    if not usable:
        return [f"needs {spec.vendor.upper()} GPUs, this machine has {machine.gpus[0].vendor.upper()}"]
    reasons = []
    if spec.archs:
        usable = [g for g in usable if g.arch in spec.archs]
        if not usable:
            found = ", ".join(sorted({g.arch for g in machine.gpus}))
            reasons.append(f"needs GPU arch {' or '.join(spec.archs)}, found {found}")
    if spec.min_memory_gib:
        roomy = [g for g in usable if g.memory_gib >= spec.min_memory_gib]
        if usable and not roomy:
            reasons.append(
                f"needs {spec.min_memory_gib:g} GiB per GPU, largest here has {max(g.memory_gib for g in usable):.1f} GiB"
            )
    if not reasons and (found := len(suitable(spec, machine))) < gpus_needed:
        reasons.append(f"needs {gpus_needed} GPUs{f' ({counted})' if counted else ''}, {found} suitable here")
    return reasons
