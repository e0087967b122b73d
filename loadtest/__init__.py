"""Benchmarks (`make bench`) and Locust load scenarios."""
