"""GPU kernels this project adds to SGLang (Triton). Each one states what it replaces and computes exactly
what that computes, up to summation order:

* :mod:`.gemv` - small-M GEMV for decode (BF16, INT8 W8A8); `sglang_ext.small_m_gemv` decides where it runs.
* :mod:`.mxfp4_act_quant` - Quark's MXFP4 activation quantize-dequantize in one pass, bit-exact with the codec;
  the Quark MXFP4 W4A4 schemes on CUDA (`sglang_ext.quantization.quark.w4a4_mxfp4_cuda`) run it.
"""
