"""How clients (the CLI, the load generator, the catalog indexer) reach the gateway: TLS and a bearer token.

The token comes from `--token` or the `RECSTACK_TOKEN` environment variable (preferred: a flag shows in
`ps`). It travels as gRPC call credentials (`authorization: Bearer …`), which gRPC sends only over TLS or
over a loopback connection: a token is never sent in clear across a network.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

TOKEN_ENV = "RECSTACK_TOKEN"
OWN_CONNECTION_OPTION = "grpc.use_local_subchannel_pool"  # this channel's connections are not shared with others


@dataclass(frozen=True)
class ClientSecurity:
    """TLS files and the bearer token of a gateway client; all optional."""

    tls: bool = False
    ca_cert: Path | None = None  # PEM roots to verify the gateway (default: the system's)
    client_cert: Path | None = None  # mutual TLS: this client's PEM certificate chain ...
    client_key: Path | None = None  # ... and its key
    token: str = ""

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give the client certificate and its key together")
        if not self.tls and (self.ca_cert or self.client_cert):
            raise ValueError("certificates are only used with TLS (--tls)")

    @classmethod
    def with_env_token(
        cls, tls: bool, ca_cert: Path | None, client_cert: Path | None, client_key: Path | None, token: str | None
    ) -> ClientSecurity:
        """These settings, with the token taken from $RECSTACK_TOKEN when none is given."""
        return cls(tls, ca_cert, client_cert, client_key, token or os.environ.get(TOKEN_ENV, ""))

    def __repr__(self) -> str:  # never show the token
        return f"ClientSecurity(tls={self.tls}, ca_cert={self.ca_cert}, client_cert={self.client_cert})"

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials, or None for a plain channel (no TLS, no token)."""
        if self.tls:
            base: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self.ca_cert),
                private_key=_read(self.client_key),
                certificate_chain=_read(self.client_cert),
            )
        elif self.token:
            base = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            return None
        if not self.token:
            return base
        return grpc.composite_channel_credentials(base, grpc.access_token_call_credentials(self.token))

    def channel(self, target: str) -> grpc.Channel:
        """A blocking channel to the gateway."""
        credentials = self.credentials()
        return grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)

    def aio_channel(self, target: str, own_connection: bool = False) -> grpc.aio.Channel:
        """An asyncio channel to the gateway.

        gRPC lets channels with equal settings to one target share a connection; `own_connection` gives this one
        its own (several gateway workers on one port each get whole connections, see server.workers).
        """
        credentials = self.credentials()
        options = [(OWN_CONNECTION_OPTION, 1)] if own_connection else []
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The client flags: --tls, --ca-cert, --client-cert, --client-key, --token."""
    parser.add_argument("--tls", action="store_true", help="connect over TLS")
    parser.add_argument("--ca-cert", type=Path, help="PEM roots to verify the gateway (default: the system's)")
    parser.add_argument("--client-cert", type=Path, help="mutual TLS: this client's PEM certificate chain")
    parser.add_argument("--client-key", type=Path, help="mutual TLS: the key of --client-cert")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}; prefer the variable)")


def from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClientSecurity:
    """The ClientSecurity the flags of `add_arguments` describe (the token falls back to $RECSTACK_TOKEN);
    inconsistent flags end in `parser.error`."""
    try:
        return ClientSecurity.with_env_token(args.tls, args.ca_cert, args.client_cert, args.client_key, args.token)
    except ValueError as error:
        parser.error(str(error))
