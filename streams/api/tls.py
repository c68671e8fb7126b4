"""TLS for the HTTP API: the server's context (Faust's ``web_ssl_context``)
and the context workers use to reach each other over https.

``LEDGER_WEB_TLS_CERT`` (PEM chain; may hold the key) and
``LEDGER_WEB_TLS_KEY`` turn it on. A worker then forwards lookups over https
and verifies the other worker's certificate against ``LEDGER_WEB_TLS_CA``
(default: the certificate file itself, for one self-signed certificate
shared by all workers), host name included: the certificate must name the
address workers advertise (``LEDGER_WEB_HOST``).
"""

from __future__ import annotations

import ssl


class TlsConfigError(RuntimeError):
    pass


def enabled(settings) -> bool:
    return settings.web_tls_cert is not None


def server_context(settings) -> ssl.SSLContext | None:
    if settings.web_tls_cert is None:
        if settings.web_tls_key is not None:
            raise TlsConfigError("LEDGER_WEB_TLS_KEY is set without LEDGER_WEB_TLS_CERT")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.web_tls_cert),
                                str(settings.web_tls_key) if settings.web_tls_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"LEDGER_WEB_TLS_CERT/LEDGER_WEB_TLS_KEY: cannot load "
                             f"{settings.web_tls_cert}: {exc}") from None
    return context


def client_context(settings) -> ssl.SSLContext | None:
    """What a worker trusts when it forwards to another; None without TLS."""
    if settings.web_tls_cert is None:
        return None
    ca = settings.web_tls_ca or settings.web_tls_cert
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"LEDGER_WEB_TLS_CA: cannot load {ca}: {exc}") from None


def scheme(settings) -> str:
    return "https" if enabled(settings) else "http"
