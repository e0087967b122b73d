"""`maskfleet-models`: inspect the model repository and move its stages by hand.

Built on `shared.repository` alone (atomic publish, stage pointers with history), so what a
human does here is exactly what training and the rollout do, on local paths and on gs://.
"""
