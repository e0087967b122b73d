"""Feedback on served masks: keep answers (served.py), take corrections for them (corrections.py).

A client that received a mask from `POST /v1/segment` (header `X-Request-Id`) may send a
corrected mask to `POST /v1/feedback`. The correction is scored against what was served (IoU
per model version, the live quality the rollout compares) and stored with the original image
in the dataset layout under the feedback prefix, where the next retraining picks it up.
"""

from .answers import ServedAnswers
from .corrections import Feedback, FeedbackReceipt, mask_iou
from .kept import KeptAnswers
from .served import (
    AlreadyCorrected,
    FeedbackUnavailable,
    RedisServedLog,
    RequestNotKept,
    ServedLog,
    ServedMask,
)

__all__ = [
    "AlreadyCorrected",
    "Feedback",
    "FeedbackReceipt",
    "FeedbackUnavailable",
    "KeptAnswers",
    "RedisServedLog",
    "RequestNotKept",
    "ServedAnswers",
    "ServedLog",
    "ServedMask",
    "mask_iou",
]
