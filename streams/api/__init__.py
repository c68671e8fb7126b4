"""The worker's HTTP API (Faust web views, aiohttp underneath).

    POST /v1/commands                              validate, publish; ?wait=1&timeout_ms=N
    GET  /v1/commands/{command_id}?account_id=A    the outcome of a command sent to A
    GET  /v1/transfers/{transfer_id}?account_id=A  a transfer from A: status, source events
    GET  /v1/accounts/{account_id}                 current state; ?as_of=T or ?version=N
    GET  /v1/accounts/{account_id}/events          ?from=T1&to=T2&limit=N&cursor=C
    GET  /v1/health, /v1/openapi.json, /metrics

Every lookup names an account, whose partition's owner answers it; any other
worker forwards it there (:mod:`streams.api.forwarding`). Every worker
validates path ids and query parameters the same way before routing
(:mod:`streams.api.requests`), so a bad request gets the same 400 wherever it
is sent. Answers are built only from committed state. Errors:
:mod:`streams.api.errors`.

Modules: ``accounts``, ``commands``, ``transfers``, ``system`` (health,
OpenAPI, metrics) hold the views; ``base`` their common part; ``shared`` the
clients they share; ``requests``, ``errors`` and ``openapi`` are pure and
import no web framework (importing this package does not either).
"""

from __future__ import annotations


def register_views(app, settings, processor) -> None:
    """Add the API's routes to the Faust ``app``; its clients close with the app."""
    from mode import Service

    from streams.api.accounts import Account, AccountEvents
    from streams.api.commands import CommandOutcome, Commands
    from streams.api.shared import Shared
    from streams.api.system import Health, Metrics, OpenApi
    from streams.api.transfers import TransferStatus

    shared = Shared(settings, processor)
    app.ledger_api = shared
    for path, view in (
        ("/v1/commands", Commands),
        ("/v1/commands/{command_id}", CommandOutcome),
        ("/v1/transfers/{transfer_id}", TransferStatus),
        ("/v1/accounts/{account_id}", Account),
        ("/v1/accounts/{account_id}/events", AccountEvents),
        ("/v1/health", Health),
        ("/v1/openapi.json", OpenApi),
        ("/metrics", Metrics),
    ):
        # A subclass per app: Faust writes the route onto the class it registers.
        app.page(path)(type(view.__name__, (view,), {}))

    class ApiClients(Service):
        """Closes the views' HTTP session and producer when the worker stops."""

        async def on_stop(self) -> None:
            await shared.close()

    app.service(ApiClients)
