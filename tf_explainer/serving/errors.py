"""One error type for both protocols, with TensorFlow Serving's status -> HTTP mapping.

The server raises it with a gRPC status code; the REST front end turns the code into the HTTP
status TF Serving would send, and both clients raise it back with the server's message, so
callers handle REST and gRPC failures the same way.
"""

import grpc

# TF Serving's mapping of canonical status codes to HTTP statuses (ToHTTPStatusCode in its REST
# handler): 499 is nginx's "client closed request", which TF Serving reuses for CANCELLED.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
# Several codes share an HTTP status (400: INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE;
# 409: ALREADY_EXISTS, ABORTED); a client sees the one a predict or metadata call gives most.
_CODE_FROM_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                   403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                   409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                   429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
                   501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
                   504: grpc.StatusCode.DEADLINE_EXCEEDED}


class ServingError(Exception):
    """A failed serving call: `code` (grpc.StatusCode), `http_status` and the server's `message`."""

    def __init__(self, message, code=grpc.StatusCode.INVALID_ARGUMENT, http_status=None):
        self.message = str(message)
        self.code = code
        self.http_status = http_status if http_status is not None else http_status_of(code)
        super().__init__(f"{self.code.name} (HTTP {self.http_status}): {self.message}")


def invalid_argument(message):
    return ServingError(message, grpc.StatusCode.INVALID_ARGUMENT)


def not_found(message):
    return ServingError(message, grpc.StatusCode.NOT_FOUND)


def failed_precondition(message):
    return ServingError(message, grpc.StatusCode.FAILED_PRECONDITION)


def http_status_of(code) -> int:
    """The HTTP status TF Serving answers for a gRPC status code (500 for the rest)."""
    return _HTTP_STATUS.get(code, 500)


def code_of_http_status(status) -> grpc.StatusCode:
    """The gRPC status code that an HTTP error status stands for (INTERNAL for other 5xx,
    UNKNOWN for other 4xx)."""
    return _CODE_FROM_HTTP.get(status, grpc.StatusCode.INTERNAL if status >= 500
                               else grpc.StatusCode.UNKNOWN)
