"""The inference API: live segmentation over REST (`/v1`) and Open Inference Protocol v2."""
