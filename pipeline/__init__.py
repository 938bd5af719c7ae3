"""Online detection of production problems from OpenTelemetry telemetry on Kafka."""

__version__ = "0.1.0"
