"""podnet benchmarks: ``python -m bench`` runs them all (each ``bench_*.py`` has ``main()``)."""
