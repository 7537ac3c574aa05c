"""benchmarks stage of the rtpose data flow."""
