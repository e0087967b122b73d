"""Loaded model versions of one worker process.

Jobs pin versions, so a worker may meet more than one; each is loaded once (the same way as
the API: `shared.segmentation.load_model`) and the least recently used is dropped beyond
`keep`, because every loaded version costs memory.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from shared.model.runtime import SAVEDMODEL, SegmentationModel
from shared.repository import ModelRepository
from shared.segmentation import load_model

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, repository: ModelRepository, cache_dir: Path, keep: int = 2, *,
                 variant: str = SAVEDMODEL, threads: int = 0, batch: int = 16) -> None:
        self.repository = repository
        self.cache_dir = cache_dir
        self.keep = max(1, keep)
        self.variant = variant
        self.threads = threads
        self.batch = batch
        self._loaded: OrderedDict[tuple[str, int], SegmentationModel] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, name: str, version: int) -> SegmentationModel:
        with self._lock:
            found = self._loaded.get((name, version))
            if found is not None:
                self._loaded.move_to_end((name, version))
                return found
            model = load_model(self.repository, name, version, self.cache_dir,
                               variant=self.variant, threads=self.threads, batch=self.batch)
            model.warm_up((1,))
            self._loaded[(name, version)] = model
            while len(self._loaded) > self.keep:
                dropped, _ = self._loaded.popitem(last=False)
                log.info("model unloaded", extra={"model": dropped[0], "version": dropped[1]})
            log.info("model loaded", extra={"model": name, "version": version,
                                            "variant": model.variant,
                                            "load_seconds": round(model.load_seconds, 3)})
            return model

    def loaded(self) -> list[tuple[str, int]]:
        return list(self._loaded)
