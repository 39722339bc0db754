"""SGLang's own tests of two kernels this repository's paths call, extended to the routing of the models served
here: the Triton fused MoE in INT8 W8A8 per-channel (Quark INT8 experts) and the append kernel that puts the
fused shared expert into every token's top-k (FSE).

The upstream files are SGLang's, not this repository's; they are carried to the GPU machine in .gpu/peers/
and also run there unchanged (`pytest .gpu/peers`):

| file (sglang repository) | commit | sha256 |
| --- | --- | --- |
| test/registered/quant/test_int8_kernel.py | 11c6353cb1c0 | 726f130acb926e7c… |
| test/registered/moe/test_fused_append_shared_experts.py | f60f793838054 | 2b7ee511bb83afe2… |

Here their test classes are subclassed with Qwen3.5's routing: top-k 8 (35B-A3B) and 10 (397B-A17B), and 9 and
11 (the same with the fused shared expert, not powers of two), at the 35B's hidden and expert sizes in BF16.
Nothing else changes.
"""

import importlib.util
import unittest
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
PEERS = Path(__file__).resolve().parents[2] / ".gpu" / "peers"
# SGLang 0.5.17's fused_append_shared_experts_with_weights (sglang/kernels/ops/moe/fused_moe_triton_kernels.py:1380)
# takes apply_sigmoid and scale; fuse_gate came later upstream (PR #28666), so its tests cannot run on 0.5.17.
NO_FUSE_GATE = "fuse_gate is newer than SGLang 0.5.17 (fused_moe_triton_kernels.py:1380 has no such argument)"


def _upstream(name: str):
    if not torch.cuda.is_available():
        pytest.skip("no GPU on this machine", allow_module_level=True)
    path = PEERS / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"SGLang's {name}.py is not in {PEERS} (see this module's docstring)", allow_module_level=True)
    spec = importlib.util.spec_from_file_location(f"sglang_upstream_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


int8_kernel = _upstream("test_int8_kernel")
append_kernel = _upstream("test_fused_append_shared_experts")


class TestInt8FusedMoEQwen35Routing(int8_kernel.TestW8A8Int8FusedMoE):
    DTYPES = [torch.bfloat16]  # the serving dtype
    E = [64]
    TOP_KS = [8, 9, 10, 11]
    N = [512]  # moe_intermediate_size of 35B-A3B
    K = [2048]  # hidden_size of 35B-A3B


class TestFusedAppendQwen35TopK(append_kernel.TestFusedAppendSharedExperts):
    KS = [8, 10]  # with S = 1 shared slot: 9 and 11 columns

    @unittest.skip(NO_FUSE_GATE)
    def test_fuse_gate_matches_eager(self): ...

    @unittest.skip(NO_FUSE_GATE)
    def test_fuse_gate_and_apply_sigmoid_mutually_exclusive(self): ...

    @unittest.skip(NO_FUSE_GATE)
    def test_fuse_gate_requires_hidden_and_gate(self): ...
