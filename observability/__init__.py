"""Monitoring that ships with the chart: Grafana dashboards built from code.

The alert rules live as a plain Prometheus rule file in `charts/maskfleet/rules/` so that
promtool can check and unit-test them unchanged.
"""
