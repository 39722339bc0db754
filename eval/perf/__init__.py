"""Speed tooling at real Qwen3.5 shapes: decode (`bench_decode`), where its GPU time goes (`profile_decode`),
serving throughput (`bench_serving`), the three in one command (`bench_suite`), speculative decoding's
speed-up against acceptance (`bench_spec`), fused-MoE config tuning (`tune_moe`), the small-M GEMV against
SGLang's linears (`bench_gemv`), the #23 headline (`headline`), and the bytes a decode step must read per
format, on any machine (`byte_bound`). The accuracy evals stay in `eval/`; `python -m eval speed` is the
serving sweep these call. What they measured: docs/performance.md."""
