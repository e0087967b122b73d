"""FastAPI dependencies: routes get the app's components through these aliases.

`create_app` stores the components on `app.state`; tests swap any of them with
`app.dependency_overrides[get_x] = ...`. They are `async def` because FastAPI runs plain
`def` dependencies in its thread pool: a thread hop per dependency per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .dataplane import DataPlane
from .drain import DrainMarker
from .feedback import Feedback, KeptAnswers, ServedLog
from .metrics import ApiMetrics
from .model_holder import ModelHolder
from .pipeline import Segmenter
from .settings import InferenceSettings


async def get_settings(request: Request) -> InferenceSettings:
    settings: InferenceSettings = request.app.state.settings
    return settings


async def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def get_drain(request: Request) -> DrainMarker:
    drain: DrainMarker = request.app.state.drain
    return drain


async def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


async def get_compare_segmenters(request: Request) -> dict[str, Segmenter]:
    """Segmenters of further stages by name (`compare_stage`); usually empty."""
    compare: dict[str, Segmenter] = request.app.state.compare_segmenters
    return compare


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


async def get_feedback(request: Request) -> Feedback:
    feedback: Feedback = request.app.state.feedback
    return feedback


@dataclass(frozen=True)
class SegmentParts:
    """Everything `/v1/segment` uses, in one object on `app.state` (tests swap it there).

    The route reads it directly (`routes.segment.ServedDirectly`); its declared dependency
    only documents the endpoint.
    """

    settings: InferenceSettings
    segmenter: Segmenter
    compare: dict[str, Segmenter]
    """Segmenters of further stages by name (`compare_stage`); usually empty."""
    served_log: ServedLog
    kept: KeptAnswers


async def get_segment_parts(request: Request) -> SegmentParts:
    parts: SegmentParts = request.app.state.segment_parts
    return parts


async def get_request_id(request: Request) -> str:
    request_id: str = request.state.request_id
    return request_id


SettingsDep = Annotated[InferenceSettings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
DrainDep = Annotated[DrainMarker, Depends(get_drain)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
CompareSegmentersDep = Annotated[dict[str, Segmenter], Depends(get_compare_segmenters)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
FeedbackDep = Annotated[Feedback, Depends(get_feedback)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
SegmentPartsDep = Annotated[SegmentParts, Depends(get_segment_parts)]
