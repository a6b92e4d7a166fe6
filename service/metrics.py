"""Prometheus metrics (DESIGN.md's names), in a registry of the app's own: nothing global.

The series of one model version carry ``model`` and ``version`` labels (a repository serves several versions,
each with its own batcher); :meth:`Metrics.model` hands a version its own view of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
VERSION_LABELS = ["model", "version"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        # protocol: "http" (route: the path template, status: the HTTP status) or "grpc" (route: the RPC's method,
        # status: the gRPC code's name, OK or INVALID_ARGUMENT say).
        self.requests = Counter("detector_requests", "Requests by protocol, route and status", ["protocol", "route", "status"], registry=r)
        self.request_duration = Histogram(
            "detector_request_duration_seconds", "Request latency", ["protocol", "route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "detector_queue_wait_seconds", "Time a request waited for its batch", VERSION_LABELS, buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "detector_inference_duration_seconds", "Time of one graph run (per batch)", VERSION_LABELS, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("detector_batch_size", "Requests per graph run", VERSION_LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("detector_requests_in_flight", "Requests being handled (HTTP and gRPC)", registry=r)
        self.queue_depth = Gauge("detector_queue_depth", "Requests waiting for a batch", VERSION_LABELS, registry=r)
        self.rejected = Counter("detector_rejected", "Requests refused or dropped, by reason", ["reason"], registry=r)
        self.inference_failures = Counter("detector_inference_failures", "Batches whose graph run failed", registry=r)
        self.images = Counter("detector_images", "Images run through the model", VERSION_LABELS, registry=r)
        self.detections = Counter("detector_detections", "Detections returned", VERSION_LABELS, registry=r)
        self.ready = Gauge("detector_ready", "1 when the model version is loaded, warmed up and not draining", VERSION_LABELS, registry=r)
        self.model_info = Gauge("detector_model_info", "The model versions being served", ["name", "version", "provider"], registry=r)

    def model(self, name: str, version: str) -> ModelMetrics:
        """The series of one model version (the labelled children), and the server's shared ones."""
        return ModelMetrics(
            name=name,
            version=version,
            parent=self,
            rejected=self.rejected,
            inference_failures=self.inference_failures,
            queue_wait=self.queue_wait.labels(name, version),
            inference_duration=self.inference_duration.labels(name, version),
            batch_size=self.batch_size.labels(name, version),
            queue_depth=self.queue_depth.labels(name, version),
            images=self.images.labels(name, version),
            detections=self.detections.labels(name, version),
            ready=self.ready.labels(name, version),
        )


@dataclass(frozen=True)
class ModelMetrics:
    """What a version's detector and batcher record into; the shared counters (rejections, failures) are the server's."""

    name: str
    version: str
    parent: Metrics
    rejected: Counter
    inference_failures: Counter
    queue_wait: Histogram  # the labelled children
    inference_duration: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    images: Counter
    detections: Counter
    ready: Gauge

    def serving(self, provider: str) -> None:
        self.parent.model_info.labels(self.name, self.version, provider).set(1)

    def forget(self, provider: str) -> None:
        """Drops the gauges of an unloaded version: a gone version is not 'not ready', it is not there. Counters stay."""
        for gauge, labels in (
            (self.parent.ready, (self.name, self.version)),
            (self.parent.queue_depth, (self.name, self.version)),
            (self.parent.model_info, (self.name, self.version, provider)),
        ):
            try:
                gauge.remove(*labels)
            except KeyError:  # never set: the version failed before it served
                continue
