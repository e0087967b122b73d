"""PyTriton's side of `make bench-peers`: the bench SavedModel bound to a Triton server.

As PyTriton's quick start has it: a `@batch` inference function bound with `Triton.bind` and a
`ModelConfig` whose `DynamicBatcher` groups queued requests, served on Triton's HTTP endpoint
(the binary tensor extension included). PyTriton starts the `tritonserver` binary its wheel
ships; the function runs in this process. It runs in the peers' virtualenv (var/peers-venv).

`python -m loadtest.peers.triton_server --model DIR --http-port N --grpc-port N
--metrics-port N` serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sysconfig
from typing import Any

import numpy as np
import tensorflow as tf
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from loadtest.peers.pipeline import segment

SIGNATURE, INPUT_NAME, CLASS_IDS = "serving_default", "images", "class_ids"


def serve(model: str, http_port: int, grpc_port: int, metrics_port: int, max_batch_size: int,
          max_delay_us: int) -> None:
    module = tf.saved_model.load(model)
    fn = module.signatures[SIGNATURE]
    size = int(fn.structured_input_signature[1][INPUT_NAME].shape[1])

    def class_ids(images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(fn(**{INPUT_NAME: tf.constant(images)})[CLASS_IDS])

    class_ids(np.zeros((1, size, size, 3), np.float32))  # trace once

    @batch  # type: ignore[untyped-decorator]
    def infer(image_bytes: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        masks = segment([bytes(item) for item in image_bytes.reshape(-1)], class_ids, size)
        out = np.empty((len(masks), 1), dtype=object)
        out[:, 0] = masks
        return {"mask_png": out}

    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          http_address="127.0.0.1", grpc_address="127.0.0.1", log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="unet", infer_func=infer,
                    inputs=[Tensor(name="image_bytes", dtype=np.bytes_, shape=(1,))],
                    outputs=[Tensor(name="mask_png", dtype=np.bytes_, shape=(1,))],
                    config=ModelConfig(max_batch_size=max_batch_size, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=max_delay_us)),
                    strict=True)
        triton.serve()


def _own_libpython() -> None:
    """Point Triton's Python backend stub at this interpreter's libpython.

    The stub links `libpython3.11.so.1.0` by name; with a Python built elsewhere (pyenv) the
    loader would pick the system's copy of another patch release, whose C code then runs this
    interpreter's standard library and fails (`RLock` has no `_recursion_count`). tritonserver
    and the stub inherit the environment, so the path is set before PyTriton starts them.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        rest = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{rest}" if rest else libdir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="SavedModel directory")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-us", type=int, default=5000)
    args = parser.parse_args(argv)
    # PyTriton shuts its tritonserver child down on SIGINT; the bench stops servers with
    # SIGTERM, which would otherwise leave that child running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _own_libpython()
    serve(args.model, args.http_port, args.grpc_port, args.metrics_port, args.max_batch_size,
          args.max_delay_us)


if __name__ == "__main__":
    main()
