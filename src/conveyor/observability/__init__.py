"""Observability: Prometheus metrics and health probes, OpenTelemetry traces, stuck-job
reports. Each part needs its own extra (``conveyor[metrics]``, ``conveyor[otel]``) only when
it is turned on; importing this package needs none."""
