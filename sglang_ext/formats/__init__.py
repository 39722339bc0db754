"""On-disk checkpoint formats: which tensors a Qwen3.5-MoE checkpoint of each quantization scheme holds.

`schemes` describes the four quantized schemes (tensors per Linear, exclusion semantics, detection from
config.json); `layout` expands a config.json into the full list of expected tensors. The fixture writers
and `python -m sglang_ext.inspect` share both. `shards` plans and writes safetensors shards for the quantizer
and the fixture writers.
"""
