"""GPU kernels this project adds to SGLang (Triton). Each one states what it replaces and computes exactly
what that computes, up to summation order:

* :mod:`.gemv` - small-M GEMV for decode (BF16, INT8 W8A8); `sglang_ext.small_m_gemv` decides where it runs.
* :mod:`.mxfp4_act_quant` - Quark's MXFP4 activation quantize-dequantize in one pass, bit-exact with the codec;
  the Quark MXFP4 W4A4 schemes on CUDA (`sglang_ext.quantization.quark.w4a4_mxfp4_cuda`) run it.
* :mod:`.shared_gate` - the fused shared expert's gate, sigmoid and top-k append in one launch; its weight keeps
  float32 where SGLang's CUDA path rounds to BF16 twice. The Qwen3.5 override's fused MoE block runs it under
  ``SGLANG_EXT_FUSED_SHARED_GATE=1``.
"""
