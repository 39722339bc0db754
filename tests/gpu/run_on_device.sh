#!/usr/bin/env bash
# Run the GPU tests on a bare GPU machine with no package index: unpack the offline SGLang bundle parts
# (built by shared/tools/gpu-bundle/build.sh into .gpu/bundle) found here, then run pytest on the given paths (default tests/gpu),
# or with `--run COMMAND...` that command (e.g. --run python -m eval.perf.bench_decode).
# The parts may arrive in separate calls (a call carries at most 64 MiB): run this once per part; tests
# start once both parts are installed.  Logs go to $OUT (or ./runs) so nothing is lost.
set -uo pipefail
PREFIX=${SGL_PREFIX:-/opt/sgl}
LOGS=${OUT:-runs}
mkdir -p "$PREFIX" "$LOGS"
for part in .gpu/*/part-*.tar.xz; do
  [ -e "$part" ] || continue
  name=$(basename "$part" .tar.xz)
  [ -e "$PREFIX/.$name.done" ] && continue
  tar -xJf "$part" -C "$PREFIX" && touch "$PREFIX/.$name.done" && echo "installed $name into $PREFIX"
done
# Extra wheels (e.g. lm-eval's, eval/gpu-wheels.txt) carried in .gpu/w*/ go to $PREFIX/extra.
for wheel in .gpu/w*/*.whl; do
  [ -e "$wheel" ] || continue
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$PREFIX/extra" "$wheel" && echo "installed $(basename "$wheel")"
done
# SGLang's JIT-compiled kernels (its Marlin MoE takes ~6 min of nvcc on a fresh machine) from an earlier
# machine: a tar of ~/.cache/tvm-ffi carried in .gpu/jit/; SAVE_JIT=1 writes one to $LOGS after the run.
JIT_CACHE=${TVM_FFI_CACHE_DIR:-$HOME/.cache/tvm-ffi}
for cache in .gpu/jit/*.tar; do
  [ -e "$cache" ] || continue
  mkdir -p "$JIT_CACHE" && tar -xf "$cache" -C "$JIT_CACHE" && echo "restored JIT kernels from $cache"
done
save_jit() { [ -n "${SAVE_JIT:-}" ] && [ -d "$JIT_CACHE" ] && tar -cf "$LOGS/tvm-ffi.tar" -C "$JIT_CACHE" . ; }
[ -n "${INSTALL_ONLY:-}" ] && exit 0
if [ ! -e "$PREFIX/.part-a.done" ] || [ ! -e "$PREFIX/.part-b.done" ]; then
  echo "bundle incomplete in $PREFIX (have: $(ls -A "$PREFIX" | grep '^\.part' | tr '\n' ' ')); run again with the other part"
  exit 0
fi
export PYTHONPATH="$PREFIX:$PREFIX/extra${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
if [ "${1:-}" = "--run" ]; then
  shift
  "$@" 2>&1 | tee "$LOGS/run.log"
  status=${PIPESTATUS[0]}
else
  python3 -m pytest -v -s -p no:cacheprovider "${@:-tests/gpu}" 2>&1 | tee "$LOGS/gpu-tests.log"
  status=${PIPESTATUS[0]}
fi
save_jit
exit "$status"
