"""The classic-tutorial way to serve the model: the baseline `make bench` has to beat.

One request = one model call; the client resizes and scales the image itself and sends it as a
JSON list of floats (`{"instances": [[[[r, g, b], ...]]]}`), and the mask comes back as a JSON
list of class ids (`{"predictions": [[[id, ...]]]}`), as in most "serve your Keras model with
FastAPI" tutorials and TF Serving's REST predict. It calls the same SavedModel signature the API
does (not the Keras model eagerly), so the gap the bench shows is the serving design: batching
and binary payloads.

`python -m loadtest.baseline --model DIR --port N` serves it under uvicorn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from shared.model.serving import LoadedModel


class PredictRequest(BaseModel):
    instances: list[list[list[list[float]]]]


class PredictResponse(BaseModel):
    predictions: list[list[list[int]]]


def create_app(saved_model: Path) -> FastAPI:
    model = LoadedModel(saved_model)
    model.warm_up((1,))
    app = FastAPI(title="tutorial-style baseline")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> PredictResponse:
        images = np.asarray(request.instances, dtype=np.float32)
        return PredictResponse(predictions=model.class_ids(images).tolist())

    return app


def request_body(pixels: np.ndarray) -> bytes:
    """What a tutorial client sends for one `[S, S, 3]` image already scaled to [0, 1]."""
    return json.dumps({"instances": [pixels.tolist()]}).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="SavedModel directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main()
