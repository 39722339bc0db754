#!/usr/bin/env bash
# Download the wheels of eval/gpu-wheels.txt for the GPU host (Python 3.12, manylinux x86_64, no package index),
# building the sdist-only ones (marked "# sdist") as py3-none-any wheels, and pack them into ROOT/w1, ROOT/w2, ...
# (default ROOT .gpu) of at most 60 MiB each, one folder per device call's carry (64 MiB); run_on_device.sh
# installs every .gpu/w*/*.whl it finds. Each line is taken without its dependencies: the list is closed.
#   bash tests/gpu/wheels.sh [ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-.gpu}
LIMIT=$((60 * 1024 * 1024))
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
sdists=$(grep -E '#[[:space:]]*sdist' eval/gpu-wheels.txt | sed -e 's/#.*//' -e 's/[[:space:]]//g')
for requirement in $(sed -e 's/#.*//' -e 's/[[:space:]]//g' eval/gpu-wheels.txt | grep -v '^$'); do
  if grep -qxF "$requirement" <<< "$sdists"; then
    pip wheel -q --no-deps --no-binary=:all: -w "$WORK" "$requirement"
  else
    pip download -q --no-deps "${PLAT[@]}" -d "$WORK" "$requirement"
  fi
done
# First fit, largest first: every folder stays under LIMIT.
declare -a used=()
while read -r size wheel; do
  (( size > LIMIT )) && { echo "$wheel is $((size >> 20)) MiB, over one carry" >&2; exit 1; }
  slot=0
  while (( slot < ${#used[@]} )) && (( used[slot] + size > LIMIT )); do slot=$((slot + 1)); done
  used[slot]=$(( ${used[slot]:-0} + size ))
  mkdir -p "$ROOT/w$((slot + 1))" && mv "$WORK/$wheel" "$ROOT/w$((slot + 1))/"
done < <(cd "$WORK" && find . -name '*.whl' -printf '%s %f\n' | sort -rn)
for slot in "${!used[@]}"; do
  echo "$ROOT/w$((slot + 1)): $(ls "$ROOT/w$((slot + 1))" | wc -l) wheels, $((used[slot] >> 20)) MiB (one device call's carry)"
done
