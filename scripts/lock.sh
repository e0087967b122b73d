#!/usr/bin/env bash
# Regenerates the lock files in requirements/ from pyproject.toml (`make lock`).
#
# One resolution serves every install target: dev.txt (all extras + the dev tools) is solved
# first, then each image's lock is solved with dev.txt as constraints, so a package shared by
# two targets (tensorflow-cpu, numpy, protobuf...) has the same version in all of them and an
# inference image always loads the SavedModel a training image of the same commit publishes.
# Existing pins are kept unless pyproject.toml no longer admits them; to move versions:
#   scripts/lock.sh --upgrade                 # everything to the newest allowed
#   scripts/lock.sh --upgrade-package redis   # one package (repeatable)
# The locks target CPython 3.11 on x86_64 Linux (CI and the images); each pin lists the hashes
# of all its files, so the same lock also installs on other platforms where wheels exist.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=$(command -v uv) || { echo "need uv: make install (dev lock has it)"; exit 1; }
common=(--quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28)

# image/target name -> extras; the Dockerfile and tests/unit/test_locks.py use the same table
declare -A extras=(
  [inference]="api rollout"
  [worker]="worker"
  [training]="train"
)

"$UV" pip compile pyproject.toml --extra dev "${common[@]}" "$@" -o requirements/dev.txt
for target in "${!extras[@]}"; do
  args=()
  for extra in ${extras[$target]}; do args+=(--extra "$extra"); done
  "$UV" pip compile pyproject.toml "${args[@]}" -c requirements/dev.txt "${common[@]}" \
    -o "requirements/$target.txt"
done

# The CUDA variant (docker build --build-arg TENSORFLOW=cuda) swaps tensorflow-cpu for
# tensorflow[and-cuda] of the same version; everything TensorFlow needs stays as locked.
tf=$(sed -n 's/^tensorflow-cpu==\([^ ]*\).*/\1/p' requirements/dev.txt)
[ -n "$tf" ] || { echo "tensorflow-cpu missing from requirements/dev.txt"; exit 1; }
sed -i "s/^tensorflow\[and-cuda\]==.*/tensorflow[and-cuda]==$tf/" requirements/cuda.in
"$UV" pip compile requirements/cuda.in -c requirements/dev.txt "${common[@]}" \
  -o requirements/cuda.txt
echo "locked: $(ls requirements/*.txt | tr '\n' ' ')(tensorflow $tf)"
