#!/usr/bin/env bash
# Regenerates the gRPC modules of the Open Inference Protocol v2 (`make protos`) from
# services/inference/grpc_v2/grpc_predict_v2.proto with the pinned grpcio-tools (dev extra).
# The output is checked in; tests/unit/test_grpc_stubs.py regenerates it into a temporary
# folder and fails when the committed files differ. OUT overrides the output root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
OUT=${OUT:-.}
"$PYTHON" -m grpc_tools.protoc -I. --python_out="$OUT" --pyi_out="$OUT" \
  --grpc_python_out="$OUT" services/inference/grpc_v2/grpc_predict_v2.proto
# The messages go to a descriptor pool of their own instead of protobuf's default one: the
# `inference.*` names are also registered by tritonclient.grpc (and Triton/KServe's Python
# packages), and one pool refuses a second definition, so without this the server and those
# clients could not be imported into one process (a test, a transformer calling Triton).
pb2="$OUT/services/inference/grpc_v2/grpc_predict_v2_pb2.py"
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' "$pb2"
grep -q '^POOL = _descriptor_pool.DescriptorPool()$' "$pb2" || { echo "$pb2: pool rewrite failed"; exit 1; }
