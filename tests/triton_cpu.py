"""Triton kernels on a CPU, in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where no GPU is).

Two gaps of the interpreter (Triton 3.6) against the GPU, which the tests account for:

* its ``tl.dot`` multiplies bfloat16 operands as their raw uint16 bits (triton-lang/triton#11584; the
  maintainers' answer: bfloat16 is not supported yet). :func:`bf16_dot` widens them to float32 first, which is
  exact (a bfloat16 is the upper half of a float32) and what tensor cores do before accumulating.
* it rounds float32 -> bfloat16 toward zero, the GPU to nearest even: a stored bfloat16 is within one ulp
  (2**-7 of its value) in the interpreter, half an ulp on the GPU (``BF16_ROUNDING``).

What the interpreter cannot show, how Triton lowers a kernel for the GPU, :func:`sm90_ptx` shows: Triton
compiles for a target without the GPU being there.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import triton.language as tl
from triton.runtime import interpreter

BF16_ROUNDING = 2.0**-7  # relative error of a float32 -> bfloat16 store in the interpreter (2**-8 on the GPU)


def _widen_bf16(operand: interpreter.TensorHandle) -> interpreter.TensorHandle:
    if operand.dtype.scalar != tl.bfloat16:
        return operand
    return interpreter.TensorHandle((operand.data.astype(np.uint32) << 16).view(np.float32), tl.float32)


@pytest.fixture
def bf16_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's tl.dot on bfloat16 operands computes with their values."""
    stock = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return stock(self, _widen_bf16(a), _widen_bf16(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


_COMPILE = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

module, name, signature, constexprs, options = json.loads(sys.argv[1])
kernel = getattr(importlib.import_module(module), name)
while not isinstance(kernel, triton.runtime.JITFunction):  # under @triton.autotune / @triton.heuristics
    kernel = kernel.fn
index = {arg: (kernel.arg_names.index(arg),) for arg in signature}
source = ASTSource(kernel, signature, {index[arg]: value for arg, value in constexprs.items()},
                   {index[arg]: [["tt.divisibility", 16]] for arg, kind in signature.items() if kind != "constexpr"})
print(json.dumps(triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]))
"""


def sm90_ptx(kernel: str, signature: dict[str, str], constexprs: dict[str, object], **options: int) -> str:
    """The PTX Triton emits for sm90 from `kernel` ("module:name"), every non-constexpr argument 16-divisible
    (aligned pointers, sizes in whole vectors). In a subprocess, since this one interprets kernels."""
    module, name = kernel.split(":")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps([module, name, signature, constexprs, options])],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
