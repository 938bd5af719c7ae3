"""``python -m pipeline analyze``: the detectors over a time range, on demand, as a report.

- ``timerange``: durations and times as a person writes them (pure);
- ``collect``: what the report needs from the trace samples and resources the stages derive,
  bounded (pure; plugged into ``pipeline.local.LocalPipeline`` as detectors);
- ``report``: the report document and its text rendering (pure);
- ``sources``: the records of a Kafka topic range or of Collector file-exporter files (I/O);
- ``cli``: the command, which runs the worker's stages in-process on them.
"""
