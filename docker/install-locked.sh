#!/bin/sh
# Installs an image's locked dependencies into the build venv, then the project itself:
#   install-locked deps inference|worker|training   (before the sources are copied: cached)
#   install-locked project                          (after; also drops pip from the venv)
# Every file is checked against the hash in requirements/<target>.txt and pip resolves nothing
# (--no-deps), so the image gets exactly the versions CI tested. TENSORFLOW=cuda (the
# Dockerfile's build argument) swaps tensorflow-cpu for tensorflow[and-cuda] of the same
# version from requirements/cuda.txt; everything else stays as locked.
set -eu
variant=${TENSORFLOW:-cpu}
case "$variant" in
  cpu|cuda) ;;
  *) echo "TENSORFLOW must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac
case "${1:-}" in
  deps)
    pip install --require-hashes --no-deps -r "requirements/$2.txt"
    if [ "$variant" = cuda ]; then
      # tensorflow-cpu and tensorflow ship the same files: remove one before adding the other
      pip uninstall --yes tensorflow-cpu
      pip install --require-hashes --no-deps -r requirements/cuda.txt
    fi ;;
  project)
    # the locked setuptools builds the wheel: no unpinned build backend is downloaded
    pip install --no-deps --no-build-isolation .
    # the lock must hold every dependency of the target's extras (the CUDA variant lacks
    # tensorflow-cpu by design, so only the CPU images can be checked this way)
    if [ "$variant" = cpu ]; then pip check; fi
    pip uninstall --yes pip ;;
  *) echo "usage: install-locked deps TARGET | install-locked project" >&2; exit 2 ;;
esac
