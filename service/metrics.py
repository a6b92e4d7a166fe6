"""Prometheus metrics (DESIGN.md's names), in a registry of the app's own: nothing global."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


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
            "detector_queue_wait_seconds", "Time a request waited for its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "detector_inference_duration_seconds", "Time of one graph run (per batch)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("detector_batch_size", "Requests per graph run", buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("detector_requests_in_flight", "Requests being handled (HTTP and gRPC)", registry=r)
        self.queue_depth = Gauge("detector_queue_depth", "Requests waiting for a batch", registry=r)
        self.rejected = Counter("detector_rejected", "Requests refused or dropped, by reason", ["reason"], registry=r)
        self.inference_failures = Counter("detector_inference_failures", "Batches whose graph run failed", registry=r)
        self.images = Counter("detector_images", "Images run through the model", registry=r)
        self.detections = Counter("detector_detections", "Detections returned", registry=r)
        self.ready = Gauge("detector_ready", "1 when the model is loaded, warmed up and not draining", registry=r)
        self.model_info = Gauge("detector_model_info", "The model being served", ["name", "version", "provider"], registry=r)
