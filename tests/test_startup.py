"""The launcher names a starting server's phase from SGLang 0.5.17's log (lines as an H200 run wrote them)."""

import pytest

from launch import startup

LOG = """\
[2026-12-02 07:39:20] Load weight begin. avail mem=139.07 GB
[2026-12-02 07:39:32] Load weight end. elapsed=11.74 s, type=Qwen3_5MoeForConditionalGeneration, quant=modelopt_fp4, quant_algo=NVFP4, avail mem=134.08 GB, mem usage=5.00 GB.
[2026-12-02 07:39:34] Mamba Cache is allocated. max_mamba_cache_size: 5724, conv_state size: 0.29GB, ssm_state size: 16.77GB
[2026-12-02 07:39:35] KV Cache is allocated. dtype: torch.float8_e4m3fn, #tokens: 26019136, K size: 6.20 GB, V size: 6.20 GB
[2026-12-02 07:39:35] Capture target prefill CUDA graph begin. backend=breakable, num_tokens=[4, 8, 32768], avail mem=86.44 GB
  0%|          | 0/106 [00:00<?, ?it/s]\rCapturing num tokens (num_tokens=32768 avail_mem=85.87 GB):   1%|          | 1/106 [00:15<26:54, 15.38s/it]\rCapturing num tokens (num_tokens=32256 avail_mem=75.33 GB):   2%|          | 2/106 [00:16<13:54, 8.1s/it]
[2026-12-02 07:40:02] Capture target prefill CUDA graph end. elapsed=26.55 s, mem usage=5.32 GB, avail mem=80.80 GB.
[2026-12-02 07:40:07] Capture draft decode CUDA graph begin. backend=full, num_tokens_per_req=1, bs=[1, 2, 10], avail mem=80.73 GB
[2026-12-02 07:40:21] Engine startup timings (s): load_weight=13.63, kv_cache_allocation=0.51, cuda_graph={prefill=26.55, draft_decode=10.00}
[2026-12-02 07:40:24] The server is fired up and ready to roll!
"""


def _upto(marker: str) -> str:
    return LOG[: LOG.index(marker) + len(marker)]


@pytest.mark.parametrize("marker, phase", [
    ("Load weight begin", "loading weights"),
    ("type=Qwen3_5MoeForConditionalGeneration", "loaded Qwen3_5MoeForConditionalGeneration"),
    ("KV Cache is allocated", "allocating the KV and DeltaNet state pools"),
    ("Capture target prefill CUDA graph begin", "capturing prefill CUDA graphs (a host's first start compiles their kernels: minutes)"),
    ("2/106 [00:16<13:54, 8.1s/it]", "capturing prefill CUDA graphs (a host's first start compiles their kernels: minutes) 2/106"),
    ("Capture draft decode CUDA graph begin", "capturing draft decode CUDA graphs"),
    ("ready to roll!", "warming up"),
])
def test_each_marker_names_its_phase(marker, phase):
    assert startup.phase(_upto(marker)) == phase


def test_no_marker_yet_and_the_timings_once_ready():
    assert startup.phase("[2026-12-02 07:38:41] server_args=ServerArgs(...)") is None
    assert startup.timings(_upto("Load weight begin")) is None
    assert startup.timings(LOG) == "load_weight=13.63, kv_cache_allocation=0.51, cuda_graph={prefill=26.55, draft_decode=10.00}"
