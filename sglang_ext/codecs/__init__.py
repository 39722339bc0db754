"""Bit-exact codecs for the quantized checkpoint formats we serve.

* :mod:`.mxfp4` - OCP MXFP4 (AMD Quark W4A4, compressed-tensors ``mxfp4-pack-quantized``)
* :mod:`.nvfp4` - NVIDIA ModelOpt NVFP4
* :mod:`.int8` - AMD Quark W8A8 INT8
* :mod:`.e2m1` - the FP4 element table and nibble packing shared by MXFP4 and NVFP4

Each codec depends on torch only; tests check them byte for byte against the
producing tools.
"""
