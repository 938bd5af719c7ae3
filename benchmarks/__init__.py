"""Benchmarks: ``python -m benchmarks.throughput`` and ``python -m benchmarks.accuracy``.

Both replay a simulator scenario into fresh, uniquely named topics on a real broker
(``KAFKA_BOOTSTRAP_SERVERS``, default ``127.0.0.1:9092``), run a real worker subprocess on them,
print a readable table and, as the very last line, one JSON object (see ``DESIGN.md``,
"Benchmarks"). ``harness`` holds the Kafka and worker plumbing they share; ``scoring`` is pure.
"""
