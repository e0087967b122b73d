"""`make bench-peers`: maskfleet beside MLServer and PyTriton on the same SavedModel.

The driver (`python -m loadtest.peers`, `driver.py`) and the pure pieces (`payloads`, `table`,
`launch`, `pipeline`) run in the project's virtualenv; `mlserver_runtime` and `triton_server`
only inside the peers' own (var/peers-venv, `requirements.txt` here). Importing this package
imports nothing heavy.
"""
