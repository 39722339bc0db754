#!/usr/bin/env bash
# Run the GPU tests on a bare GPU machine with no package index: unpack the offline SGLang bundle parts
# (built by shared/tools/gpu-bundle/build.sh into .gpu/bundle) found here, then run pytest on the given paths (default tests/gpu),
# or with `--run COMMAND...` that command (e.g. --run python -m eval.perf.bench_decode).
# The parts may arrive in separate calls (a call carries at most 64 MiB): run this once per part; tests
# start once both parts are installed.  Logs go to $OUT (or ./runs) so nothing is lost.
# A job longer than one call: `--detach NAME COMMAND...` starts it in its own session from a copy of the
# repository (later calls re-sync the working tree under it), with $OUT at $JOBS/NAME/out; each later call's
# `--collect` prints every job's state and log tail and packs $JOBS (weights left out) into $OUT/jobs.tgz.
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
  done_mark="$PREFIX/extra/.$(basename "$wheel").done"
  [ -e "$done_mark" ] && continue
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$PREFIX/extra" "$wheel" \
    && touch "$done_mark" && echo "installed $(basename "$wheel")"
done
# SGLang's JIT-compiled kernels (its Marlin MoE takes ~6 min of nvcc on a fresh machine) from an earlier
# machine: ~/.cache/tvm-ffi as xz-compressed tar parts carried in .gpu/jit/; SAVE_JIT=1 writes them to $LOGS
# after the run, in parts under the 16 MiB a returned file may have.
JIT_CACHE=${TVM_FFI_CACHE_DIR:-$HOME/.cache/tvm-ffi}
if compgen -G ".gpu/jit/tvm-ffi.tar.xz.part-*" > /dev/null; then
  mkdir -p "$JIT_CACHE" && cat .gpu/jit/tvm-ffi.tar.xz.part-* | xz -d | tar -x -C "$JIT_CACHE" && echo "restored JIT kernels from .gpu/jit"
fi
save_jit() {
  [ -n "${SAVE_JIT:-}" ] && [ -d "$JIT_CACHE" ] || return 0
  tar -cf - -C "$JIT_CACHE" . | xz -T0 -1 | split -b 15M - "$LOGS/tvm-ffi.tar.xz.part-"
}
[ -n "${INSTALL_ONLY:-}" ] && exit 0
if [ ! -e "$PREFIX/.part-a.done" ] || [ ! -e "$PREFIX/.part-b.done" ]; then
  echo "bundle incomplete in $PREFIX (have: $(ls -A "$PREFIX" | grep '^\.part' | tr '\n' ' ')); run again with the other part"
  exit 0
fi
export PYTHONPATH="$PREFIX:$PREFIX/extra${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
JOBS=${GPU_JOBS:-/root/jobs}
case "${1:-}" in
  --detach)
    name=${2:?usage: run_on_device.sh --detach NAME COMMAND...}; shift 2
    job="$JOBS/$name"; rm -rf "$job/repo"; mkdir -p "$job/repo" "$job/out"
    tar --exclude=./.gpu -cf - . | tar -xf - -C "$job/repo"
    (cd "$job/repo" && OUT="$job/out" setsid nohup bash -c '"$@"; echo $? > ../exit' job "$@" > "$job/log" 2>&1 &)
    echo "started $name: $*; log $job/log, results $job/out"
    exit 0 ;;
  --collect)
    for job in "$JOBS"/*/; do
      [ -d "$job" ] || continue
      echo "== $(basename "$job"): $( [ -e "$job/exit" ] && echo "exit $(cat "$job/exit")" || echo running)"
      tail -n "${TAIL:-8}" "$job/log" | cut -c1-300
    done
    # weights and kernels stay behind: checkpoints, the conformance suite's dequantized references, rehearse's
    # Triton caches (a returned file is at most 16 MiB)
    tar -czf "$LOGS/jobs.tgz" --exclude='*/repo' --exclude='*/checkpoints' --exclude='*/triton-cache' --exclude='*.safetensors' -C "$JOBS" . 2>/dev/null
    save_jit
    exit 0 ;;
esac
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
