"""Latency and throughput benchmarks for the authorization hop, and the CI latency gate (README.md here)."""
