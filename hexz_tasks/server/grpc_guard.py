"""What every gRPC call passes before a service method runs: the shared-token check of
the TrainingService (HEXZ_GRPC_TOKEN) and request bytes that do not parse (answered with
INVALID_ARGUMENT naming the message type, not gRPC's generic INTERNAL); and the server's
TLS credentials (HEXZ_GRPC_TLS_CERT / HEXZ_GRPC_TLS_KEY).

Clients send the token as the metadata entry ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from hexz_tasks.settings import Settings

TOKEN_CHECKED_PREFIX = "/hexzpb.TrainingService/"


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class Guard(grpc.ServerInterceptor):
    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler  # unknown method (UNIMPLEMENTED); no service streams requests
        if self._expected is not None and details.method.startswith(TOKEN_CHECKED_PREFIX):
            sent = dict(details.invocation_metadata or ()).get("authorization", "")
            if not hmac.compare_digest(str(sent).encode(), self._expected):
                return _replace_behaviour(handler, _refuse)
        return _with_safe_parsing(handler, details.method)


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "this TrainingService needs the shared token (metadata 'authorization: Bearer <token>')",
    )


def _replace_behaviour(handler: grpc.RpcMethodHandler, behaviour: Callable) -> Any:
    field = "unary_stream" if handler.response_streaming else "unary_unary"
    return handler._replace(**{field: behaviour})  # RpcMethodHandler is a namedtuple


def _with_safe_parsing(handler: grpc.RpcMethodHandler, method: str) -> Any:
    parse = handler.request_deserializer
    run = handler.unary_stream if handler.response_streaming else handler.unary_unary

    def safe_parse(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:  # protobuf raises DecodeError, and others on odd bytes
            return _Undecodable(e)

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes of {method} do not parse: {str(request.error)[:200]}",
            )
        return run(request, context)

    return _replace_behaviour(handler, checked)._replace(request_deserializer=safe_parse)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured certificate chain and key files, or None."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    try:
        chain = settings.grpc_tls_cert.read_bytes()
        key = settings.grpc_tls_key.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read the gRPC TLS certificate or key: {e}") from None
    return grpc.ssl_server_credentials([(key, chain)])
