"""Where results go: the findings topic, the dead-letter topic, and Prometheus metrics."""
