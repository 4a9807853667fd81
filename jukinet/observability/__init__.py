"""Structured logs and Prometheus metrics."""

from jukinet.observability.logging import configure_logging
from jukinet.observability.metrics import NodeMetrics, start_metrics_server

__all__ = ["NodeMetrics", "configure_logging", "start_metrics_server"]
