"""A throwaway certificate authority for TLS pods.

In a cluster, pod certificates name the service, not the pod IPs a balancer
dials; tests reproduce that so the library's name override is exercised.
trustme is a test dependency only, hence imported when a PKI is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from grpclb.testing.dns import SERVICE_NAME

if TYPE_CHECKING:
    import trustme


class TestPki:
    """One CA per instance; certificates it issues verify only against it."""

    __test__ = False  # a library class whose name starts with "Test": not for pytest to collect

    def __init__(self) -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "grpclb.testing.TestPki needs trustme: pip install 'grpclb-client[dev]'"
            ) from exc
        self.ca: trustme.CA = trustme.CA()

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def server_cert_for(self, *names: str) -> tuple[bytes, bytes]:
        """Returns ``(cert_chain_pem, private_key_pem)`` for ``names`` (default: the service)."""
        cert = self.ca.issue_cert(*(names or (SERVICE_NAME,)))
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        return chain, cert.private_key_pem.bytes()

    def server_tls(self, *names: str) -> tuple[bytes, bytes]:
        """Returns ``(private_key_pem, cert_chain_pem)``: the order pods and gRPC take."""
        chain, key = self.server_cert_for(*names)
        return key, chain

    def client_credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials trusting this CA only."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
