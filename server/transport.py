"""The gateway's listening side: TLS (optionally mutual) from `security`, and secure-by-default exposure.

A gateway bound to a non-loopback address must have TLS and tokens, unless `security.allow_insecure`
says a plaintext or unauthenticated gateway is intended (e.g. TLS ends at a trusted proxy). Loopback
stays plaintext, so the local stack and `make demo` need no certificates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import grpc

from server.config import LOOPBACK_HOSTS, GatewaySettings, SecuritySettings


class InsecureExposure(Exception):
    """The gateway would listen beyond loopback without TLS and tokens, and that was not allowed."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def check_exposure(gateway: GatewaySettings, security: SecuritySettings) -> None:
    """Raise InsecureExposure, naming the settings, when a non-loopback gateway lacks TLS or tokens."""
    if is_loopback(gateway.host) or security.allow_insecure:
        return
    missing = [
        *([] if security.tls else ["TLS (security.tls_cert_file, security.tls_key_file)"]),
        *([] if security.authentication else ["tokens (security.tokens or security.tokens_file)"]),
    ]
    if missing:
        raise InsecureExposure(
            f"gateway.host {gateway.host} is not a loopback address and {' and '.join(missing)} are not configured; "
            "configure them, or set security.allow_insecure=true (RECSTACK_SECURITY__ALLOW_INSECURE=true) "
            "if this is intended"
        )


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (client certificates required when a client CA is set)."""
    if security.tls_cert_file is None or security.tls_key_file is None:
        return None
    client_ca = security.tls_client_ca_file.read_bytes() if security.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(security.tls_key_file.read_bytes(), security.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bind(
    servers: Sequence[grpc.aio.Server],
    address: str,
    credentials: grpc.ServerCredentials | None,
    loopback_port: int = 0,
) -> int:
    """Add the listening port (TLS with `credentials`) and the plaintext loopback port if any to every server (one
    port for all: port 0 picks it for the first); returns the listening port."""
    host = address.rsplit(":", 1)[0]
    port = 0
    for server in servers:
        at = f"{host}:{port}" if port else address
        port = server.add_insecure_port(at) if credentials is None else server.add_secure_port(at, credentials)
        if loopback_port:
            server.add_insecure_port(f"127.0.0.1:{loopback_port}")
    return port


# Printed on stdout once the gateway serves, followed by host:port; a `server.workers` supervisor waits for it.
READY_LINE = "gateway ready on "
DRAIN_GRACE_S = 5.0  # on stop, in-flight RPCs get this long to finish before they are cancelled
