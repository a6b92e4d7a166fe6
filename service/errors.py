"""The service's exceptions, each with its HTTP status and an RFC 9457 problem type."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    status = 500
    title = "Internal Server Error"
    type = "about:blank"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status, title, type = 400, "Bad Request", "/problems/bad-request"


class InvalidParameter(ServiceError):
    status, title, type = 422, "Invalid Parameter", "/problems/invalid-parameter"


class InvalidImage(ServiceError):
    status, title, type = 422, "Invalid Image", "/problems/invalid-image"


class RequestTimeout(ServiceError):
    status, title, type = 408, "Request Timeout", "/problems/request-timeout"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class ClientClosedRequest(ServiceError):
    # nginx's 499: nobody reads this answer, but logs and metrics must not count it as a server fault.
    status, title, type = 499, "Client Closed Request", "/problems/client-closed-request"


class Unauthorized(ServiceError):
    status, title, type = 401, "Unauthorized", "/problems/unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="detector"'}


class ImageTooLarge(ServiceError):
    status, title, type = 413, "Image Too Large", "/problems/image-too-large"


class BodyTooLarge(ServiceError):
    status, title, type = 413, "Request Body Too Large", "/problems/body-too-large"


class UnsupportedMediaType(ServiceError):
    status, title, type = 415, "Unsupported Media Type", "/problems/unsupported-media-type"


class ModelNotFound(ServiceError):
    status, title, type = 404, "Model Not Found", "/problems/model-not-found"


class LoadFailed(ServiceError):
    """A model control request refused or failed (a bad package or policy); what was serving is untouched."""

    status, title, type = 400, "Load Failed", "/problems/load-failed"


class ControlDisabled(LoadFailed):
    type = "/problems/model-control-disabled"


class TooManyVersions(LoadFailed):
    type = "/problems/too-many-versions"


class QueueFull(ServiceError):
    status, title, type = 503, "Queue Full", "/problems/queue-full"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class NotReady(ServiceError):
    status, title, type = 503, "Not Ready", "/problems/not-ready"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class DeadlineExceeded(ServiceError):
    status, title, type = 504, "Deadline Exceeded", "/problems/deadline-exceeded"


class InferenceFailed(ServiceError):
    status, title, type = 500, "Inference Failed", "/problems/inference-failed"
