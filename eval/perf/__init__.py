"""Speed tooling at real Qwen3.5 shapes: decode (`bench_decode`), where its GPU time goes (`profile_decode`),
serving throughput (`bench_serving`), the three in one command (`bench_suite`), speculative decoding's
speed-up against acceptance (`bench_spec`) and fused-MoE config tuning (`tune_moe`). The accuracy evals stay
in `eval/`; `python -m eval speed` is the serving sweep these call. What they measured: docs/performance.md."""
