"""The worker's HTTP API (Faust web views, aiohttp underneath).

    POST /v1/commands                              validate, publish; ?wait=1&timeout_ms=N
    GET  /v1/commands/{command_id}?account_id=A    the outcome of a command sent to A
    GET  /v1/transfers/{transfer_id}?account_id=A  a transfer from A: status, source events
    GET  /v1/accounts/{account_id}                 current state; ?as_of=T or ?version=N
    GET  /v1/accounts/{account_id}/events          ?from=T1&to=T2&limit=N&cursor=C
    GET  /v1/accounts/{account_id}/statements      ?from=YYYY-MM-DD&to=YYYY-MM-DD (read model)
    GET  /v1/ledger/totals                         ledger-wide money check (read model)
    GET  /v1/ledger/totals/local                   this worker's partitions of it
    GET  /v1/health, /v1/openapi.json, /metrics

Every lookup names an account, whose partition's owner answers it; any other
worker forwards it there (:mod:`streams.api.forwarding`). Every worker
validates path ids and query parameters the same way before routing
(:mod:`streams.api.requests`), so a bad request gets the same 400 wherever it
is sent. Answers are built only from committed state. Errors:
:mod:`streams.api.errors`.

Who may call: :mod:`streams.api.auth` (bearer tokens from LEDGER_API_TOKENS,
re-read on SIGHUP; the workers' forward secret), checked by every view before
anything else; TLS: :mod:`streams.api.tls`.

Modules: ``accounts``, ``commands``, ``transfers``, ``system`` (health,
OpenAPI, metrics) hold the views; ``base`` their common part; ``shared`` the
clients they share; ``requests``, ``errors``, ``openapi``, ``auth`` and ``tls``
are pure and import no web framework (importing this package does not either).
"""

from __future__ import annotations


def register_views(app, settings, processor) -> None:
    """Add the API's routes to the Faust ``app``; its clients close with the app."""
    import asyncio
    import signal

    from mode import Service

    from streams.api.accounts import Account, AccountEvents
    from streams.api.commands import CommandOutcome, Commands
    from streams.api.ledger_views import AccountStatements, LedgerTotals, LocalTotals
    from streams.api.shared import Shared
    from streams.api.system import Health, Metrics, OpenApi
    from streams.api.transfers import TransferStatus
    from streams.api.holds import HoldStatus

    shared = Shared(settings, processor)
    app.ledger_api = shared
    for path, view in (
        ("/v1/commands", Commands),
        ("/v1/commands/{command_id}", CommandOutcome),
        ("/v1/transfers/{transfer_id}", TransferStatus),
        ("/v1/holds/{hold_id}", HoldStatus),
        ("/v1/accounts/{account_id}", Account),
        ("/v1/accounts/{account_id}/events", AccountEvents),
        # Read models (streams/readmodels.py, streams/api/ledger_views.py).
        ("/v1/accounts/{account_id}/statements", AccountStatements),
        ("/v1/ledger/totals", LedgerTotals),
        ("/v1/ledger/totals/local", LocalTotals),
        ("/v1/health", Health),
        ("/v1/openapi.json", OpenApi),
        ("/metrics", Metrics),
    ):
        # A subclass per app: Faust writes the route onto the class it registers.
        app.page(path)(type(view.__name__, (view,), {}))

    class ApiClients(Service):
        """Says at start how the API is protected, re-reads the tokens file on
        SIGHUP, and closes the views' HTTP session and producer at stop."""

        async def on_start(self) -> None:
            log_protection(settings, shared)
            # mode's Worker handles INT, TERM, USR1 and USR2, not HUP (whose
            # default would end the process, tokens file or not).
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, shared.client_auth.reload)

        async def on_stop(self) -> None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await shared.close()

    app.service(ApiClients)


def log_protection(settings, shared) -> None:
    """One start-up line on how the API is protected (never a token)."""
    import logging

    from streams.api import tls

    log = logging.getLogger("ledger.http.auth")
    scheme = tls.scheme(settings)
    where = f"{scheme}://{settings.web_host}:{settings.web_port}"
    if shared.client_auth.open:
        log.warning("HTTP API on %s is OPEN: no LEDGER_API_TOKENS, anyone who reaches "
                    "it can move money%s", where,
                    " (LEDGER_API_INSECURE=1 on a non-loopback host)"
                    if settings.api_insecure else "; bound to loopback only")
    else:
        log.info("HTTP API on %s: bearer tokens from %s (%d tokens, re-read on SIGHUP)",
                 where, settings.api_tokens_file, shared.client_auth.count)
        if shared.client_auth.count == 0:
            log.warning("the tokens file holds no token: every client request to a "
                        "protected route is refused")
    log.info("forwarded lookups are signed with the forward secret from %s",
             shared.forward_secret_source)
