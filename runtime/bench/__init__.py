"""Benchmarks behind `loomsight bench` (figures quoted in issue notes come from here)."""
