"""The errors flowhooks itself produces, each mapped to the contract's JSON envelope
`{"status", "error", "message", "data"}`:

    ApiError
     ├── BadRequest            400 bad_request
 │    └── InvalidInput      400 invalid_input (a filter that cannot be evaluated: names its path)
     ├── Unauthorized          401 unauthorized (with WWW-Authenticate: Bearer)
     ├── Forbidden             403 forbidden
     ├── NotFound              404 not_found
     ├── MethodNotAllowed      405 method_not_allowed
     ├── Conflict              409 conflict (the resource's state forbids it: a paused flow)
     ├── RequestTimeout        408 request_timeout (the body arrived too slowly)
     ├── PayloadTooLarge       413 payload_too_large
     ├── UnsupportedMediaType  415 unsupported_media_type
     ├── RateLimited           429 rate_limited (with Retry-After)
     ├── FlowError             500 flow_error (a step failed)
     ├── InternalError         500 internal_error (a bug; details only in the logs)
     ├── ResultTooLarge        502 result_too_large (a run's stored answer was cut)
     ├── Unavailable           503 unavailable (with Retry-After; broker or peer down)
     └── Timeout               504 timeout

An error raised by an RPC handler travels back to the caller as its kind and message
and is raised there again as the same class (`error_from_kind`).
"""

from typing import Any, ClassVar

from shared.schemas.vocabulary import envelope


class ApiError(Exception):
    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal_error"

    def __init__(self, message: str, data: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        # A `fail` step may choose its own status code; everything else uses the class's.
        self.status_code = status if status is not None else self.status

    def envelope(self) -> dict[str, Any]:
        return envelope(self.status_code, self.kind, self.message, self.data)

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ApiError):
    status, kind = 400, "bad_request"


class InvalidInput(BadRequest):
    status, kind = 400, "invalid_input"


class Unauthorized(ApiError):
    status, kind = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="flowhooks"'}


class Forbidden(ApiError):
    status, kind = 403, "forbidden"


class NotFound(ApiError):
    status, kind = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, kind = 405, "method_not_allowed"


class Conflict(ApiError):
    status, kind = 409, "conflict"


class RequestTimeout(ApiError):
    status, kind = 408, "request_timeout"


class PayloadTooLarge(ApiError):
    status, kind = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, kind = 415, "unsupported_media_type"


class _RetryLater(ApiError):
    retry_after_s: int = 1  # a class default; an instance may set its own

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RateLimited(_RetryLater):
    status, kind = 429, "rate_limited"


class FlowError(ApiError):
    status, kind = 500, "flow_error"


class InternalError(ApiError):
    status, kind = 500, "internal_error"


class ResultTooLarge(ApiError):
    """The status URL of a run whose response body the debugger kept only in part."""

    status, kind = 502, "result_too_large"


class Unavailable(_RetryLater):
    status, kind = 503, "unavailable"
    retry_after_s = 5


class Timeout(ApiError):
    status, kind = 504, "timeout"


_BY_KIND: dict[str, type[ApiError]] = {
    cls.kind: cls
    for cls in (
        BadRequest,
        InvalidInput,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        RequestTimeout,
        PayloadTooLarge,
        UnsupportedMediaType,
        RateLimited,
        FlowError,
        InternalError,
        ResultTooLarge,
        Unavailable,
        Timeout,
    )
}


def error_from_kind(kind: str, message: str, data: Any = None) -> ApiError:
    return _BY_KIND.get(kind, InternalError)(message, data)
