"""The retraining job: synthetic data, loader, trainer, evaluation, gate and publish."""
