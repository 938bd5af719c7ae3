"""The real-telemetry corpus: real instrumented programs, real faults on 127.0.0.1, recorded
once (``python -m benchmarks.corpus.record``) and replayed through the worker many times
(``python -m benchmarks.real_corpus``)."""
