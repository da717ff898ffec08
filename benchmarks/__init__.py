"""Throughput, latency and memory benchmarks of relay against a direct and a Postfix baseline."""
