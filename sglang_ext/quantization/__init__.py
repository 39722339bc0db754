"""Quantization schemes stock SGLang 0.5.17 and 0.5.23 lack.

* :mod:`.quark_int8_spec` - which Quark layer configs are INT8 W8A8 (plain Python).
* :mod:`.int8_fallback` - INT8 W8A8 linear and MoE math in plain torch, for devices without an int8 kernel.
* :mod:`.mxfp4_moe_reference` - a Quark MXFP4 W4A4 MoE in plain torch from the stored bytes (the oracle).
* :mod:`.mxfp4_ct_names` - compressed-tensors MXFP4 expert names as SGLang's MXFP4 MoE method loads them.
* :mod:`.quark` - the SGLang side: Quark INT8 W8A8 linear and MoE schemes, Quark MXFP4 W4A4 on CUDA GPUs
  without FP4 matrix units (Marlin MoE), and the hook that registers them (imports SGLang and checks its
  version; the modules above do not import SGLang, so CI tests them).
"""
