"""Who may call the HTTP API (streams/api/auth.py), against real workers.

1. With LEDGER_API_TOKENS: a 401/403/200 table over every route and caller
   (no token, an unknown token, read, write, read+write), sent to both of two
   workers (the owner of the account's partition and the other, which
   forwards), with the same answers and the documented error shapes.
2. Forwarded requests: a worker's mark is an HMAC with the forward secret; a
   request with no mark, a forged, stale or replayed-elsewhere one is a
   client request (needs a token, never sees command_hash).
3. SIGHUP re-reads the tokens file; a broken file keeps the old tokens.
4. No open API on a non-loopback host unless LEDGER_API_INSECURE=1.
5. TLS: the worker serves https, and two workers forward over https.
6. No token value appears in any worker's log (nor in /metrics).
"""

from __future__ import annotations

import http.client
import json
import secrets
import signal
import ssl
import subprocess
import time

import pytest

from streams import legauth
from streams.api import auth, forwarding
from tests.streams.httpkit import (DOC, health, owner_of, send, start_pair, validate,
                                   wait_split)

pytestmark = pytest.mark.kafka

ACCOUNTS = [f"acct-{i}" for i in range(6)]


def token(label: str) -> str:
    return f"{label}-{secrets.token_urlsafe(24)}"


READ, WRITE, BOTH = token("read"), token("write"), token("both")
UNKNOWN = token("unknown")
CALLERS = {
    "none": None,
    "unknown": f"Bearer {UNKNOWN}",
    "prefix": f"Bearer {READ[:-1]}",
    "basic": f"Basic {READ}",
    "read": f"Bearer {READ}",
    "write": f"Bearer {WRITE}",
    "both": f"bearer {BOTH}",  # the scheme is case-insensitive
}
ALL_TOKENS = (READ, WRITE, BOTH, UNKNOWN)


def write_tokens(path, lines: list[str]) -> None:
    path.write_text("# ledger API tokens\n\n" + "\n".join(lines) + "\n")


def authz(caller: str | None) -> dict:
    return {} if caller is None else {"Authorization": caller}


def post_command(worker, body: dict, caller: str | None, wait: bool = True, context=None):
    return send(worker, "POST", "/v1/commands" + ("?wait=1&timeout_ms=20000" if wait else ""),
                json.dumps(body).encode(),
                {"Content-Type": "application/json", **authz(caller)}, context)


def wait_up(worker, context=None, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.process.poll() is None, worker.log_tail()
        body = health(worker, context)
        if body and body.get("status") == "ok":
            return
        time.sleep(0.2)
    raise AssertionError(worker.log_tail())


def assert_no_tokens_logged(workers, tokens=ALL_TOKENS) -> None:
    assert workers.started
    for worker in workers.started:
        text = worker.log_path.read_text(errors="replace")
        assert text, worker.log_path
        for value in tokens:
            # Not the token, nor a long piece of it.
            for piece in {value, value[-20:], value[:20]}:
                assert piece not in text, (worker.log_path, "token in the log")


def forward_secret(settings) -> bytes:
    if settings.forward_secret_file is not None:
        return auth.load_secrets(settings.forward_secret_file)[0]
    return auth.derive_forward_secret(legauth.load_keys(settings.leg_key_file)[0])


def mark(secret: bytes, path: str, method: str = "GET", now: float | None = None) -> dict:
    return forwarding.forwarded_headers(secret, method, path, now)


# --------------------------------------------------------------------------
# 1, 2 and 6: two workers, every route and caller, forwarded marks
# --------------------------------------------------------------------------

@pytest.fixture
def secured_pair(settings, workers, tmp_path):
    tokens = tmp_path / "tokens"
    write_tokens(tokens, [f"{READ} read", f"{WRITE} write", f"# {UNKNOWN} read (commented out)",
                          f"{BOTH}   write,read"])
    base = settings.with_(api_tokens_file=tokens)
    w1, w2 = start_pair(workers, base)
    w1.wait_ready()
    w2.wait_ready()
    owners = wait_split(w1, w2)
    rw = CALLERS["both"]
    for i, account in enumerate(ACCOUNTS):
        status, body, _ = post_command(w1 if i % 2 else w2, {
            "command_id": f"open-{account}", "type": "open_account", "account_id": account,
            "currency": "EUR"}, rw)
        assert (200, "applied") == (status, body["status"]), body
    status, body, _ = post_command(w1, {"command_id": "fund", "type": "credit",
                                        "account_id": ACCOUNTS[0], "amount": 500,
                                        "currency": "EUR"}, rw)
    assert (200, "applied") == (status, body["status"]), body
    status, body, _ = post_command(w2, {"command_id": "t-1", "type": "transfer",
                                        "from_account_id": ACCOUNTS[0],
                                        "to_account_id": ACCOUNTS[1], "amount": 200,
                                        "currency": "EUR"}, rw)
    assert (200, "applied") == (status, body["status"]), body
    deadline = time.monotonic() + 30  # the transfer settles: answers stop changing
    while send(w1, "GET", f"/v1/transfers/t-1?account_id={ACCOUNTS[0]}",
               headers=authz(rw))[1].get("status") != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return w1, w2, owners


A, B = ACCOUNTS[0], ACCOUNTS[1]
# (method, path, OpenAPI template, scope needed: read | write | None for public)
ROUTES = [
    ("GET", f"/v1/accounts/{A}", "/v1/accounts/{account_id}", "read"),
    ("GET", f"/v1/accounts/{B}?version=1", "/v1/accounts/{account_id}", "read"),
    ("GET", f"/v1/accounts/{A}/events?limit=2", "/v1/accounts/{account_id}/events", "read"),
    ("GET", f"/v1/accounts/{B}/events", "/v1/accounts/{account_id}/events", "read"),
    ("GET", f"/v1/commands/fund?account_id={A}", "/v1/commands/{command_id}", "read"),
    ("GET", f"/v1/commands/open-{B}?account_id={B}", "/v1/commands/{command_id}", "read"),
    ("GET", f"/v1/transfers/t-1?account_id={A}", "/v1/transfers/{transfer_id}", "read"),
    ("POST", "/v1/commands", "/v1/commands", "write"),
    ("GET", "/v1/health", "/v1/health", None),
    ("GET", "/v1/openapi.json", "/v1/openapi.json", None),
    ("GET", "/metrics", "/metrics", None),
]
SCOPES_OF = {"read": {"read"}, "write": {"write"}, "both": {"read", "write"}}


def expected_status(caller: str, scope: str | None, success: int) -> int:
    if scope is None:
        return success
    if caller not in SCOPES_OF:
        return 401
    return success if scope in SCOPES_OF[caller] else 403


def test_every_route_and_caller_through_owner_and_non_owner(settings, workers, secured_pair):
    w1, w2, owners = secured_pair
    sent = 0
    for method, path, template, scope in ROUTES:
        for caller, header in CALLERS.items():
            answers = []
            for worker in (w1, w2):
                if method == "POST":
                    sent += 1
                    answer = post_command(worker, {
                        "command_id": f"table-{sent}", "type": "credit", "account_id": B,
                        "amount": 1, "currency": "EUR"}, header, wait=False)
                else:
                    answer = send(worker, method, path, headers=authz(header))
                answers.append(answer)
            success = 202 if method == "POST" else 200
            want = expected_status(caller, scope, success)
            label = (method, path, caller)
            assert [want, want] == [a[0] for a in answers], (label, [a[:2] for a in answers])
            if path != "/metrics":
                first, second = answers[0][1], answers[1][1]
                if path == "/v1/health":
                    first, second = first["status"], second["status"]
                elif method == "POST" and want == 202:
                    first, second = first["status"], second["status"]
                assert first == second, (label, first, second)
            for status, body, headers in answers:
                validate(template, method.lower(), status, body, headers)
                if status in (401, 403):
                    assert body["error"] == ("unauthorized" if status == 401 else "forbidden")
                    assert body["detail"]
                    challenge = headers["WWW-Authenticate"]
                    assert challenge.startswith("Bearer "), challenge
                    if status == 403:
                        assert 'error="insufficient_scope"' in challenge
                        assert f'scope="{scope}"' in challenge
                    if caller == "unknown":
                        assert 'error="invalid_token"' in challenge
                    assert not any(t in json.dumps(body) + challenge for t in ALL_TOKENS)
                if isinstance(body, dict):
                    assert "command_hash" not in body, label

    # Authentication comes before validation: a malformed request without a
    # token learns nothing but 401; nothing refused is published.
    for path in ("/v1/accounts/..%2F..", f"/v1/accounts/{A}?as_of=-1", "/v1/commands/x"):
        assert 401 == send(w1, "GET", path)[0], path
    assert 401 == send(w1, "POST", "/v1/commands", b"{not json",
                       {"Content-Type": "text/plain"})[0]
    assert 403 == send(w1, "POST", "/v1/commands", b"{not json",
                       {"Content-Type": "text/plain", **authz(CALLERS["read"])})[0]
    # Every protected operation the document lists (routes added later
    # included) refuses a request without a token, whatever its parameters.
    for template, item in DOC["paths"].items():
        for method, operation in item.items():
            concrete = template.replace("{", "").replace("}", "")
            status = send(w2, method.upper(), concrete, b"{}" if method == "post" else None,
                          {"Content-Type": "application/json"})[0]
            if operation["security"]:
                assert status == 401, (template, method, status)
                assert {"401", "403"} <= set(operation["responses"]), template
                assert operation["x-required-scope"] in ("read", "write")
            else:
                assert template in ("/v1/health", "/v1/openapi.json", "/metrics")

    # 2. Forwarded marks. The owner answers a genuine mark as to a worker (no
    # token needed, command_hash included); anything else is a client request.
    owner = owner_of(owners, A)
    other = w2 if owner is w1 else w1
    secret = forward_secret(owner.settings)
    path = f"/v1/commands/fund?account_id={A}"
    status, body, _ = send(owner, "GET", path, headers=mark(secret, path))
    assert (200, True) == (status, "command_hash" in body), body
    # ... never forwarded twice: the non-owner answers a genuine mark with 503.
    status, body, headers = send(other, "GET", path, headers=mark(secret, path))
    assert (503, "partition_unavailable", "1") == (status, body["error"], headers["Retry-After"])
    forged = [
        {"X-Ledger-Forwarded": "1"},                                     # the old mark
        mark(b"not the secret but 32 characters!", path),                # another secret
        mark(secret, path, now=time.time() - 120),                       # stale
        mark(secret, path, now=time.time() + 120),                       # from the future
        mark(secret, f"/v1/commands/fund?account_id={B}"),               # another URL
        mark(secret, path, method="POST"),                               # another method
        {"X-Ledger-Forwarded": mark(secret, path)["X-Ledger-Forwarded"] + "0"},
    ]
    for headers in forged:
        for worker in (owner, other):
            status, body, _ = send(worker, "GET", path, headers=headers)
            assert (401, "unauthorized") == (status, body["error"]), (headers, body)
            status, body, _ = send(worker, "GET", path,
                                   headers={**headers, **authz(CALLERS["read"])})
            assert 200 == status and "command_hash" not in body, (headers, body)
            assert body["status"] == "applied"
            status, body, _ = send(worker, "GET", path,
                                   headers={**headers, **authz(CALLERS["write"])})
            assert 403 == status, (headers, body)
    # A genuine GET mark does not open POST.
    status, _, _ = send(owner, "POST", "/v1/commands", b"{}",
                        {"Content-Type": "application/json",
                         **mark(secret, "/v1/commands", method="POST")})
    assert 401 == status
    # ?wait=1 on the non-owner still sees the owner's hash (its signed lookups):
    # a retry gets the original outcome, another body with the same id is refused.
    fund = {"command_id": "fund", "type": "credit", "account_id": A, "amount": 500,
            "currency": "EUR"}
    status, again, _ = post_command(other, fund, CALLERS["write"])
    assert (200, "applied") == (status, again["status"]) and "command_hash" not in again
    status, reused, _ = post_command(other, {**fund, "amount": 501}, CALLERS["write"])
    assert ("rejected", "command_id_reused") == (reused["status"], reused["reason"])

    # 6. No token in any log line or metric.
    for worker in (w1, w2):
        text = send(worker, "GET", "/metrics")[1]
        assert 'status="401"' in text and 'status="403"' in text
        assert not any(t in text for t in ALL_TOKENS)
    assert_no_tokens_logged(workers)


# --------------------------------------------------------------------------
# 3. SIGHUP
# --------------------------------------------------------------------------

def test_sighup_reloads_tokens_and_a_broken_file_keeps_them(settings, workers, tmp_path):
    old, new, kept = token("old"), token("new"), token("kept")
    tokens = tmp_path / "tokens"
    write_tokens(tokens, [f"{old} read", f"{kept} read,write"])
    worker = workers.start(settings.with_(api_tokens_file=tokens))
    path = "/v1/accounts/nobody"

    def status_with(value):
        return send(worker, "GET", path, headers={"Authorization": f"Bearer {value}"})[0]

    assert (404, 401, 404) == (status_with(old), status_with(new), status_with(kept))
    write_tokens(tokens, [f"{new} read", f"{kept} read,write"])
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while (status_with(new), status_with(old)) != (404, 401):
        assert time.monotonic() < deadline, worker.log_tail()
        assert worker.process.poll() is None, worker.log_tail()
        time.sleep(0.1)
    assert 404 == status_with(kept)

    # A broken file (a line the wrong way round, a bad scope) is not taken:
    # the tokens in force stay, the log says why, naming no token.
    broken = token("broken")
    write_tokens(tokens, [f"read {broken}", f"{broken} admin"])
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "tokens not reloaded" not in worker.log_path.read_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    assert (404, 401, 401) == (status_with(new), status_with(old), status_with(broken))
    assert "line 3" in worker.log_tail()  # the first bad line, by number
    # An empty file is taken: every client is refused.
    write_tokens(tokens, [])
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while status_with(new) != 401:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    assert 200 == send(worker, "GET", "/v1/health")[0]
    assert worker.process.poll() is None
    assert_no_tokens_logged(workers, (old, new, kept, broken))


# --------------------------------------------------------------------------
# 4. Start-up: no open API on a reachable address
# --------------------------------------------------------------------------

def test_refuses_an_open_api_on_a_non_loopback_host(settings, workers, tmp_path):
    everywhere = settings.with_(web_host="0.0.0.0")
    refused = workers.start(everywhere, wait=False)
    assert refused.process.wait(120) != 0
    text = refused.log_path.read_text()
    assert "LEDGER_API_TOKENS" in text and "LEDGER_API_INSECURE" in text, text

    # A broken tokens file stops the worker too, without showing the token.
    tokens = tmp_path / "tokens"
    secret = token("secret")
    write_tokens(tokens, [f"read {secret}"])
    broken = workers.start(settings.with_(api_tokens_file=tokens), wait=False)
    assert broken.process.wait(120) != 0
    text = broken.log_path.read_text()
    assert "LEDGER_API_TOKENS" in text and "line 3" in text, text
    assert secret not in text

    # LEDGER_API_INSECURE=1 serves the open API anyway, and says so.
    insecure = workers.start(everywhere.with_(api_insecure=True), wait=False)
    wait_up(insecure)
    status, body, _ = send(insecure, "GET", "/v1/accounts/nobody")
    assert (404, "unknown_account") == (status, body["error"])
    assert "OPEN" in insecure.log_path.read_text()
    workers.stop(insecure)


def test_loopback_without_tokens_is_open_and_says_so(settings, workers):
    worker = workers.start(settings)
    status, body, _ = send(worker, "GET", "/v1/accounts/nobody")
    assert (404, "unknown_account") == (status, body["error"])
    # A client's old-style mark gives it nothing internal.
    status, body, _ = post_command(worker, {"command_id": "o", "type": "open_account",
                                            "account_id": "x", "currency": "EUR"}, None)
    assert 200 == status
    status, body, _ = send(worker, "GET", "/v1/commands/o?account_id=x",
                           headers={"X-Ledger-Forwarded": "1"})
    assert 200 == status and "command_hash" not in body
    assert "is OPEN" in worker.log_path.read_text()
    # SIGHUP does not end a worker without a tokens file.
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "nothing to reload" not in worker.log_path.read_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    assert worker.process.poll() is None and 200 == send(worker, "GET", "/v1/health")[0]


# --------------------------------------------------------------------------
# 5. TLS
# --------------------------------------------------------------------------

def test_tls_serves_https_and_workers_forward_over_it(settings, workers, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    secret_file = tmp_path / "forward.secret"
    secret_file.write_text(secrets.token_hex(32) + "\n")
    tokens = tmp_path / "tokens"
    write_tokens(tokens, [f"{BOTH} read,write"])
    base = settings.with_(api_tokens_file=tokens, web_tls_cert=cert, web_tls_key=key,
                          forward_secret_file=secret_file)
    w1, w2 = start_pair(workers, base)
    trusted = ssl.create_default_context(cafile=str(cert))
    owners = wait_split(w1, w2, context=trusted)

    # Plain http is not served; a client that does not trust the cert fails.
    with pytest.raises((OSError, http.client.HTTPException)):
        send(w1, "GET", "/v1/health")
    with pytest.raises(ssl.SSLError):
        send(w1, "GET", "/v1/health", context=ssl.create_default_context())

    rw = CALLERS["both"]
    for i, account in enumerate(ACCOUNTS[:4]):
        status, body, _ = post_command(w1 if i % 2 else w2, {
            "command_id": f"open-{account}", "type": "open_account", "account_id": account,
            "currency": "EUR"}, rw, context=trusted)
        assert (200, "applied") == (status, body["status"]), body
    # Each lookup through both workers: one owner, one forwarding over https.
    for account in ACCOUNTS[:4]:
        answers = [send(w, "GET", f"/v1/accounts/{account}", headers=authz(rw),
                        context=trusted)[:2] for w in (w1, w2)]
        assert answers[0] == answers[1] and answers[0][0] == 200, answers
        assert 401 == send(w1, "GET", f"/v1/accounts/{account}", context=trusted)[0]
    # The mark is keyed by LEDGER_FORWARD_SECRET_FILE, not the leg key.
    owner = owner_of(owners, A)
    path = f"/v1/commands/open-{A}?account_id={A}"
    status, body, _ = send(owner, "GET", path, context=trusted,
                           headers=mark(forward_secret(base), path))
    assert (200, True) == (status, "command_hash" in body)
    leg_derived = auth.derive_forward_secret(legauth.load_keys(settings.leg_key_file)[0])
    status, _, _ = send(owner, "GET", path, context=trusted, headers=mark(leg_derived, path))
    assert 401 == status
    assert_no_tokens_logged(workers, (BOTH,))


def test_bad_tls_or_secret_files_stop_the_worker(settings, workers, tmp_path):
    missing = tmp_path / "missing.pem"
    worker = workers.start(settings.with_(web_tls_cert=missing), wait=False)
    assert worker.process.wait(120) != 0
    assert "LEDGER_WEB_TLS_CERT" in worker.log_path.read_text()
    short = tmp_path / "short.secret"
    short.write_text("too short\n")
    worker = workers.start(settings.with_(forward_secret_file=short), wait=False)
    assert worker.process.wait(120) != 0
    text = worker.log_path.read_text()
    assert "LEDGER_FORWARD_SECRET_FILE" in text and "too short" not in text


# --------------------------------------------------------------------------
# The pure parts
# --------------------------------------------------------------------------

def test_token_file_errors_name_lines_never_tokens():
    secret = token("s")
    for text, line in ((f"{secret}\n", 1), (f"# c\n{secret} read extra\n", 2),
                       (f"read {secret}\n", 1), (f"{secret} admin\n", 1),
                       (f"{secret} read\n{secret} write\n", 2), ("short read\n", 1),
                       (f"{secret}\u00e5 read\n", 1), (f"{secret} read,\n", 1)):
        with pytest.raises(auth.AuthConfigError) as caught:
            auth.parse_tokens(text, "f")
        message = str(caught.value)
        assert f"line {line}" in message and secret not in message and secret[:8] not in message
    parsed = auth.parse_tokens(f"\n# x\n  {READ} read \n{BOTH} write,read\n")
    assert [frozenset({"read"}), frozenset({"read", "write"})] == [s for _, s in parsed]
    assert not any(READ.encode() in d or BOTH.encode() in d for d, _ in parsed)


def test_client_auth_decisions(tmp_path):
    path = tmp_path / "tokens"
    write_tokens(path, [f"{READ} read", f"{WRITE} write"])
    client = auth.ClientAuth(path)
    assert client.check(f"Bearer {READ}", "read") is None
    assert client.check(f"  bearer   {WRITE} ", "write") is None
    for header, status, error in ((None, 401, None), ("", 401, None), ("Bearer", 401, None),
                                  (f"Basic {READ}", 401, None),
                                  (f"Bearer {UNKNOWN}", 401, "invalid_token"),
                                  (f"Bearer {READ}x", 401, "invalid_token"),
                                  (f"Bearer {READ}", 403, "insufficient_scope")):
        denied = client.check(header, "write" if status == 403 else "read")
        assert denied is not None and denied.status == status, header
        assert (f'error="{error}"' in denied.challenge) == (error is not None)
        assert READ not in denied.detail + denied.challenge
    assert auth.ClientAuth(None).check(None, "write") is None
    write_tokens(path, ["broken line here"])
    assert client.reload() is False and client.check(f"Bearer {READ}", "read") is None


def test_forward_marks():
    secret, path, now = b"k" * 32, "/v1/accounts/a%2Eb?as_of=1", 1_800_000_000
    header = forwarding.forwarded_headers(secret, "GET", path, now)[forwarding.FORWARDED_HEADER]
    ok = forwarding.verify_mark
    assert ok([secret], "GET", path, header, now)
    assert ok([b"o" * 32, secret], "GET", path, header, now + 60)  # any secret, 60 s
    assert not ok([secret], "GET", path, header, now + 61)
    assert not ok([secret], "GET", path, header, now - 61)
    assert not ok([b"o" * 32], "GET", path, header, now)
    assert not ok([secret], "POST", path, header, now)
    assert not ok([secret], "GET", path + "&version=1", header, now)
    assert not ok([secret], "GET", "/v1/accounts/a.b?as_of=1", header, now)
    for bad in (None, "", "1", header.replace("v1", "v2"), header + " x",
                header.replace(str(now), "\u0661" * 10), "v1 1 " + "\u00e5" * 64):
        assert not ok([secret], "GET", path, bad, now), bad


def test_loopback_hosts():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert auth.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "127.0.0.1.nip.io", ""):
        assert not auth.is_loopback(host), host
