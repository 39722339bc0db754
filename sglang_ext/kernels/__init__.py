"""GPU kernels this project adds to SGLang (Triton). Each one states what it replaces and computes exactly
what that computes, up to summation order; `sglang_ext.small_m_gemv` decides where they run."""
