"""eval.perf.tune_moe on the GPU, at the tiny shape: it times SGLang's fused MoE over the search space, writes a
file under SGLang's lookup name, and SGLang's own lookup then returns those configs through
sglang_ext.moe_configs."""

from pathlib import Path

import pytest

from eval.perf import tune_moe
from sglang_ext import moe_configs

pytestmark = pytest.mark.gpu


def test_tuned_tiny_configs_reach_sglangs_lookup(tmp_path: Path, monkeypatch) -> None:
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config
    from sglang.srt.runtime_context import get_context

    shape = tune_moe.moe_shape("tiny", fse=True)
    best, rows = tune_moe.tune_file(shape, "bf16", [1, 8], jobs=4)
    tune_moe.print_table(rows)
    # tuned at 1 and 8; SGLang's default config kept at its prefill sizes
    assert set(best) == {1, 8, *tune_moe.PREFILL_BATCHES} and all(r.tuned_us > 0 and r.default_us > 0 for r in rows)
    # the default config is in the search space at these sizes, so tuning can only match or beat it
    assert all(r.speedup > 0.9 for r in rows)
    written = tune_moe.write_config(best, shape, "bf16", tmp_path / "tuned")
    assert written.name == tune_moe.config_file(shape, "bf16")

    monkeypatch.delenv(moe_configs.ENV, raising=False)
    monkeypatch.setattr(moe_configs, "TUNED_ROOT", tmp_path / "tuned")
    moe_configs.use_tuned_moe_configs(tmp_path / "cache")
    fused_moe_triton_config.get_moe_configs.cache_clear()
    with get_context().override_server_args():  # the lookup reads the published server args, as in a server
        found = fused_moe_triton_config.get_moe_configs(shape.experts, shape.intermediate, None)
    assert found is not None and found[1] == best[1] and found[8] == best[8]
    assert set(found) >= set(tune_moe.PREFILL_BATCHES)  # SGLang's defaults kept above the tuned range
