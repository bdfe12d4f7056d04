"""oidc.py without a network: PKCE, single-use state, ID-token checks on a Clock."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from studios_gateway.auth.oidc import (
    ClientRefused,
    ClientRegistration,
    ClientUnconfirmed,
    ConfigurationError,
    LoginFailed,
    LoginUnavailable,
    OIDCError,
    OIDCSettings,
    ProviderMetadata,
    RelyingParty,
    TokenSet,
    check_claims,
    pkce_challenge,
)
from studios_gateway.registry.base import StoreUnavailable

ISSUER = "https://idp.example.org"
NOW = 1_700_000_000


class FakeResponse:
    def __init__(self, code: int, body: Any):
        self.code = code
        self._raw = json.dumps(body).encode()
        self.stall = False
        self.aborted = False

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 - IResponse's name
        if self.stall:  # half the body, then nothing: only aborting ends it
            protocol.makeConnection(self)
            protocol.dataReceived(self._raw[:len(self._raw) // 2])
            return
        protocol.dataReceived(self._raw)
        protocol.connectionLost(Failure(ResponseDone()))

    def stopProducing(self) -> None:  # noqa: N802 - the transport's name
        self.aborted = True


class FakeHTTP:
    """Answers the token endpoint and the JWKS; records what was asked."""

    def __init__(self, key: Any, kid: str = "k1"):
        self.key, self.kid = key, kid
        self.claims: dict[str, Any] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        #: JWKS answers that stall after half their body (kept to see them aborted).
        self.stall_jwks = False
        self.stalled: list[FakeResponse] = []

    def request(self, method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        self.requests.append((method, url, kw))
        if url.endswith("/jwks"):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            jwk["kid"] = self.kid
            answer = FakeResponse(200, {"keys": [jwk]})
            if self.stall_jwks:
                answer.stall = True
                self.stalled.append(answer)
            return defer.succeed(answer)
        form = kw["data"]
        if form.get("code") != "the-code":
            return defer.succeed(FakeResponse(400, {"error": "invalid_grant"}))
        token = jwt.encode(self.claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return defer.succeed(FakeResponse(200, {"access_token": "a", "id_token": token,
                                                "expires_in": 300, "token_type": "Bearer"}))


@pytest.fixture(scope="module")
def key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_rp(key: Any, shared: Any = None, clock: Clock | None = None,
            **kw: Any) -> tuple[RelyingParty, Clock, FakeHTTP]:
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    http = FakeHTTP(key)
    rp = RelyingParty(OIDCSettings(issuer=ISSUER, redirect_uri="https://gw/_connect/callback",
                                   storage_root="/nonexistent", **kw), reactor=clock, http=http,
                      shared=shared)
    rp.metadata = ProviderMetadata(issuer=ISSUER, authorization_endpoint=ISSUER + "/auth",
                                   token_endpoint=ISSUER + "/token", jwks_uri=ISSUER + "/jwks")
    rp.client = ClientRegistration(issuer=ISSUER, client_name="gw", client_id="cid",
                                   client_secret="secret", redirect_uris=("https://gw/",))
    return rp, clock, http


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def begin(rp: RelyingParty, http: FakeHTTP, clock: Clock, **claims: Any) -> dict[str, str]:
    q = dict(parse_qsl(urlsplit(result(rp.begin("/next"))).query))
    http.claims = {"iss": ISSUER, "aud": "cid", "sub": "alice", "iat": int(clock.seconds()),
                   "exp": int(clock.seconds()) + 300, "nonce": q["nonce"], **claims}
    return q


def test_pkce_rfc7636_vector():
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_authorization_url_carries_pkce_state_nonce(key):
    rp, _, _ = make_rp(key)
    q = dict(parse_qsl(urlsplit(result(rp.begin("/x"))).query))
    assert q["code_challenge_method"] == "S256" and q["response_type"] == "code"
    assert q["client_id"] == "cid" and q["redirect_uri"] == "https://gw/_connect/callback"
    assert len(q["state"]) >= 43 and len(q["nonce"]) >= 43 and "openid" in q["scope"].split()
    q2 = dict(parse_qsl(urlsplit(result(rp.begin("/x"))).query))
    assert q2["state"] != q["state"] and q2["nonce"] != q["nonce"]


def test_full_exchange_sends_the_verifier(key):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    got = result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert got.subject == "alice" and got.next_url == "/next"
    _, _, kw = next(r for r in http.requests if r[1].endswith("/token"))
    assert pkce_challenge(kw["data"]["code_verifier"]) == q["code_challenge"]
    assert kw["data"]["redirect_uri"] == "https://gw/_connect/callback"
    assert kw["headers"]["Authorization"][0].startswith("Basic ")


def test_state_is_single_use(key):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    result(rp.finish({"state": q["state"], "code": "the-code"}))
    with pytest.raises(LoginFailed, match="state"):
        result(rp.finish({"state": q["state"], "code": "the-code"}))


def test_a_login_begun_for_a_browser_completes_only_there(key):
    """The callback's state and code, opened in a browser other than the one that began
    the login, are refused before the code is exchanged (login CSRF)."""
    rp, clock, http = make_rp(key)
    mine = "b" * 43
    q = dict(parse_qsl(urlsplit(result(rp.begin("/next", browser=mine))).query))
    http.claims = {"iss": ISSUER, "aud": "cid", "sub": "alice", "iat": int(clock.seconds()),
                   "exp": int(clock.seconds()) + 300, "nonce": q["nonce"]}
    for browsers in ((), ("c" * 43,)):
        q = dict(parse_qsl(urlsplit(result(rp.begin("/next", browser=mine))).query))
        http.claims["nonce"] = q["nonce"]
        with pytest.raises(LoginFailed, match="begun in another browser") as refused:
            result(rp.finish({"state": q["state"], "code": "the-code"}, browsers))
        assert refused.value.next_url is None  # "Try again" does not follow theirs
    assert not any(r[1].endswith("/token") for r in http.requests)
    q = dict(parse_qsl(urlsplit(result(rp.begin("/next", browser=mine))).query))
    http.claims["nonce"] = q["nonce"]
    got = result(rp.finish({"state": q["state"], "code": "the-code"}, ("c" * 43, mine)))
    assert got.subject == "alice"


def test_state_expires(key):
    rp, clock, http = make_rp(key, login_ttl=600)
    q = begin(rp, http, clock)
    clock.advance(600)
    with pytest.raises(LoginFailed, match="state"):
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert not any(r[1].endswith("/token") for r in http.requests)


def test_pending_table_is_bounded(key):
    rp, clock, http = make_rp(key, max_pending=3)
    first = begin(rp, http, clock)
    for _ in range(3):
        begin(rp, http, clock)
    with pytest.raises(LoginFailed, match="state"):
        result(rp.finish({"state": first["state"], "code": "the-code"}))


def test_wrong_code_refused_and_state_spent(key):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    with pytest.raises(LoginFailed, match="invalid_grant") as refused:
        result(rp.finish({"state": q["state"], "code": "wrong"}))
    assert refused.value.next_url == "/next"  # where "Try again" leads
    assert refused.value.extra == {}
    with pytest.raises(LoginFailed, match="state") as unknown:
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert unknown.value.next_url is None and unknown.value.extra is None
    # what the login's beginning kept with it ("Log in as someone else": its "Try again"
    # is one too)
    q = dict(parse_qsl(urlsplit(result(rp.begin("/next", {"switch": {"at": 1.0}}))).query))
    with pytest.raises(LoginFailed, match="invalid_grant") as refused:
        result(rp.finish({"state": q["state"], "code": "wrong"}))
    assert refused.value.extra == {"switch": {"at": 1.0}}


def test_provider_error_param(key):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    with pytest.raises(LoginFailed, match="access_denied") as refused:
        result(rp.finish({"state": q["state"], "error": "access_denied"}))
    assert refused.value.next_url == "/next"


@pytest.mark.parametrize(("claims", "message"), [
    ({"nonce": "other"}, "nonce"),
    ({"aud": "another"}, "not valid"),
    ({"iss": "https://evil.example"}, "not valid"),
    ({"exp": NOW - 120}, "expired"),
    ({"iat": NOW + 3600, "exp": NOW + 7200}, "future"),
    ({"aud": ["cid", "other"]}, "several parties"),
    ({"azp": "other"}, "authorized party"),
    ({"nbf": NOW + 3600}, "not valid yet"),
    ({"nbf": "soon"}, "nbf is not a time"),
])
def test_bad_id_tokens_refused(key, claims, message):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock, **claims)
    with pytest.raises(LoginFailed, match=message):
        result(rp.finish({"state": q["state"], "code": "the-code"}))


def test_token_signed_by_another_key_refused(key):
    rp, clock, http = make_rp(key)
    result(Deferred.fromCoroutine(rp._fetch_keys()))
    http.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    q = begin(rp, http, clock)
    with pytest.raises(LoginFailed, match="not valid"):
        result(rp.finish({"state": q["state"], "code": "the-code"}))


def test_unknown_kid_refetch_is_rate_limited(key):
    rp, clock, http = make_rp(key, jwks_min_refresh=60)
    q = begin(rp, http, clock)
    result(rp.finish({"state": q["state"], "code": "the-code"}))
    fetches = sum(1 for r in http.requests if r[1].endswith("/jwks"))
    http.kid = "k2"  # rotation: a new kid, and the JWKS publishes it
    clock.advance(30)
    q = begin(rp, http, clock)
    with pytest.raises(LoginFailed, match="key"):
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert sum(1 for r in http.requests if r[1].endswith("/jwks")) == fetches
    clock.advance(30)
    q = begin(rp, http, clock)
    assert result(rp.finish({"state": q["state"], "code": "the-code"})).subject == "alice"
    assert sum(1 for r in http.requests if r[1].endswith("/jwks")) == fetches + 1


def test_a_stalled_jwks_fails_the_login_in_time_and_holds_no_other(key):
    # After a key rotation every login waits for the one JWKS refetch. Its body stalled:
    # treq's timeout covers only the headers, so that login and every later one with the
    # new key waited until the issuer closed the connection (or forever).
    rp, clock, http = make_rp(key, jwks_min_refresh=0)
    q = begin(rp, http, clock)
    result(rp.finish({"state": q["state"], "code": "the-code"}))
    http.kid, http.stall_jwks = "k2", True
    q = begin(rp, http, clock)
    waiting = rp.finish({"state": q["state"], "code": "the-code"})
    clock.advance(9.9)
    assert not waiting.called
    clock.advance(0.1)
    # (a login the issuer did not answer for: "try again shortly", LoginUnavailable)
    with pytest.raises(OIDCError, match=r"^the identity provider could not be reached: the "
                                        r"JWKS fetch at https://idp\.example\.org/jwks "
                                        r"got no answer within 10s$"):
        result(waiting)
    assert http.stalled[0].aborted  # the connection was dropped, not left open
    http.stall_jwks = False
    q = begin(rp, http, clock)
    assert result(rp.finish({"state": q["state"], "code": "the-code"})).subject == "alice"


def test_check_claims_leeway():
    base = {"sub": "a", "aud": "cid", "iat": NOW, "exp": NOW + 10, "nonce": "n"}
    check_claims(base, client_id="cid", nonce="n", now=NOW + 69, leeway=60)
    with pytest.raises(LoginFailed):
        check_claims(base, client_id="cid", nonce="n", now=NOW + 70, leeway=60)
    with pytest.raises(LoginFailed):
        check_claims({**base, "sub": ""}, client_id="cid", nonce="n", now=NOW, leeway=60)


@pytest.mark.parametrize(("offset", "said"), [
    # This host's clock 5 minutes behind the issuer's: its fresh token is "from the future".
    (-300, r"issued in the future: 300s ahead of this host's clock \(the issuer's clock and "
           r"this host's differ by about 300s, more than the 60s allowed: check that both "
           r"keep time"),
    # 10 minutes ahead: the issuer's 5-minute token "expired" as it was made.
    (600, r"has expired: it expired 300s ago by this host's clock \(the issuer's clock and "
          r"this host's differ by about 600s"),
])
def test_a_token_refused_for_a_clock_that_is_off_says_so(key, offset: int, said: str):
    """A gateway whose clock is off refuses every fresh ID token alike: the line says the
    clocks differ and by how much (it said only "expired" or "issued in the future")."""
    rp, clock, http = make_rp(key)
    issuer_now = NOW - offset  # the issuer's clock, where this host's reads NOW
    q = begin(rp, http, clock, iat=issuer_now, exp=issuer_now + 300)
    with pytest.raises(LoginFailed, match=said):
        result(rp.finish({"state": q["state"], "code": "the-code"}))


class RefusingHTTP(FakeHTTP):
    """A token endpoint that does not know the gateway's client (HTTP 401 invalid_client)."""

    def request(self, method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        if url.endswith("/token"):
            self.requests.append((method, url, kw))
            return defer.succeed(FakeResponse(401, {"error": "invalid_client"}))
        return super().request(method, url, **kw)


@pytest.mark.parametrize(("static", "said"), [
    (True, "check CONNECT_OIDC_CLIENT_ID and CONNECT_OIDC_CLIENT_SECRET"),
    (False, r"registered in /nonexistent/oidc-client\.json \(it was deleted or its secret "
            r"changed at the issuer\): stop every gateway that uses that file, delete it"),
])
def test_a_refused_client_is_the_operators_to_fix_and_says_what(key, static: bool, said: str):
    """invalid_client at the code exchange, or at a refresh, is ClientRefused (not a login
    the person got wrong), naming what to check by where the client came from."""
    rp, clock, _ = make_rp(key)
    rp._http = http = RefusingHTTP(key)
    rp.client = ClientRegistration(issuer=ISSUER, client_name="gw", client_id="cid",
                                   client_secret="secret", redirect_uris=("https://gw/",),
                                   static=static)
    q = begin(rp, http, clock)
    with pytest.raises(ClientRefused, match=r"HTTP 401: invalid_client\): .*" + said):
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    with pytest.raises(ClientRefused):
        result(rp.try_client())
    # A client the issuer knows: the made-up code is refused, and that is the answer.
    rp._http = FakeHTTP(key)
    assert "invalid_grant" in result(rp.try_client())


class AnsweringHTTP(FakeHTTP):
    """A token endpoint that answers every request (`code`, `body`)."""

    def __init__(self, key: Any, code: int, body: Any):
        super().__init__(key)
        self.answer = code, body

    def request(self, method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        if url.endswith("/token"):
            self.requests.append((method, url, kw))
            return defer.succeed(FakeResponse(*self.answer))
        return super().request(method, url, **kw)


#: Gitea's and Forgejo's token endpoint (400 unauthorized_client) for a code it does not
#: know, a PKCE verifier that does not match, and a refresh token used twice: the
#: person's code or login, not the gateway's client.
GITEA_UNKNOWN_CODE = {"error": "unauthorized_client",
                      "error_description": "client is not authorized"}
GITEA_REUSED_REFRESH = {"error": "unauthorized_client",
                        "error_description": "token was already used"}


def test_unauthorized_client_for_a_code_or_a_refresh_token_is_the_persons_login(key):
    """unauthorized_client is not taken for a refused client: issuers answer it for a
    code they do not know (Gitea), so a person's refused code said "nobody can log in"
    (502) and an error, and a refresh token the issuer refused (used twice) kept the
    login on, retried every 30 s, where it was to end it."""
    rp, clock, _ = make_rp(key)
    q = begin(rp, FakeHTTP(key), clock)
    rp._http = AnsweringHTTP(key, 400, GITEA_UNKNOWN_CODE)
    with pytest.raises(LoginFailed) as refused:
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert not isinstance(refused.value, ClientRefused)
    rp._http = AnsweringHTTP(key, 400, GITEA_REUSED_REFRESH)
    with pytest.raises(LoginFailed) as refused:
        result(rp.refresh(TokenSet("a", None, "r", NOW + 60)))
    assert not isinstance(refused.value, ClientRefused)
    # invalid_client, at 400 too (RFC 6749 5.2), is the client's.
    rp._http = AnsweringHTTP(key, 400, {"error": "invalid_client"})
    with pytest.raises(ClientRefused):
        result(rp.try_client())


@pytest.mark.parametrize(("code", "body"), [
    (400, GITEA_UNKNOWN_CODE),  # (Gitea says it for a made-up code and a wrong secret alike)
    (503, {"message": "upstream down"}),
    (404, "<html>Not Found</html>"),
    (429, {"error": "slow_down"}),
])
def test_a_made_up_code_exchange_that_says_nothing_of_the_client_is_not_accepted(
        key, code: int, body: Any):
    """Only invalid_grant (the code refused, so the client was not) says the issuer
    accepts the client: a token endpoint down, not found, or answering in other words
    was said to accept it ("the client cid is accepted (... HTTP 503 ...)")."""
    rp, _, _ = make_rp(key)
    rp._http = AnsweringHTTP(key, code, body)
    with pytest.raises(ClientUnconfirmed, match=rf"HTTP {code}.*whether the issuer accepts "
                                                r"the client cid is not known"):
        result(rp.try_client())
    rp._http = AnsweringHTTP(key, 403, {"error": "invalid_grant"})  # (Auth0's status)
    assert "invalid_grant" in result(rp.try_client())


class StatusHTTP:
    """Every request answers `code` (a Platform behind a proxy that is down, or a wrong URL)."""

    def __init__(self, code: int):
        self.code = code

    def request(self, method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        return defer.succeed(FakeResponse(self.code, {"error": "whatever"}))


@pytest.mark.parametrize(("code", "fatal"), [(502, False), (503, False), (404, True)])
def test_discovery_5xx_is_transient_4xx_is_a_configuration_error(code: int, fatal: bool):
    rp = RelyingParty(OIDCSettings(issuer=ISSUER, redirect_uri="https://gw/_connect/callback",
                                   storage_root="/nonexistent"), reactor=Clock(),
                      http=StatusHTTP(code))
    with pytest.raises(OIDCError, match=f"HTTP {code}") as e:
        result(rp.start())
    assert isinstance(e.value, ConfigurationError) is fatal


class SharedLogins:
    """Stands in for Redis's pending logins (registry/redis.py; tested against a real
    redis-server in tests/integration/test_registry_redis.py), on a clock."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.kept: dict[str, tuple[float, str]] = {}
        self.down = False
        self.dropped: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("Redis at 127.0.0.1:1 is unavailable (test)")

    def keep_pending_login(self, state: str, value: str, ttl: float) -> Deferred[None]:
        self._check()
        assert state not in self.kept
        self.kept[state] = (self.clock.seconds() + ttl, value)
        return defer.succeed(None)

    def take_pending_login(self, state: str) -> Deferred[str | None]:
        self._check()
        ends, value = self.kept.pop(state, (0.0, None))  # type: ignore[arg-type]
        return defer.succeed(value if ends > self.clock.seconds() else None)

    def drop_pending_logins(self, states: list[str]) -> Deferred[None]:
        self.dropped.extend(states)
        for state in states:
            self.kept.pop(state, None)
        return defer.succeed(None)


def nodes(key: Any, **kw: Any) -> tuple[RelyingParty, RelyingParty, Clock, SharedLogins]:
    """Two nodes' relying parties sharing one store of pending logins (and one clock)."""
    clock = Clock()
    clock.advance(NOW)
    shared = SharedLogins(clock)
    a, _, _ = make_rp(key, shared=shared, clock=clock, **kw)
    b, _, _ = make_rp(key, shared=shared, clock=clock, **kw)
    return a, b, clock, shared


def claims_for(rp: RelyingParty, q: dict[str, str], clock: Clock) -> None:
    rp._http.claims = {"iss": ISSUER, "aud": "cid", "sub": "alice",  # type: ignore[attr-defined]
                       "iat": int(clock.seconds()), "exp": int(clock.seconds()) + 300,
                       "nonce": q["nonce"]}


def test_without_a_shared_store_a_login_waits_in_this_process(key):
    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    assert len(rp._pending) == 1  # one node: today's memory table
    assert result(rp.finish({"state": q["state"], "code": "the-code"})).subject == "alice"
    assert len(rp._pending) == 0


def test_with_a_shared_store_a_login_begun_on_one_node_finishes_on_another_once(key):
    a, b, clock, shared = nodes(key)
    mine = "b" * 43
    q = dict(parse_qsl(urlsplit(result(a.begin("/next", browser=mine))).query))
    assert len(a._pending) == 0 and list(shared.kept) == [q["state"]]
    kept = shared.kept[q["state"]][1]
    assert q["nonce"] in kept and mine in kept and "/next" in kept
    claims_for(b, q, clock)
    got = result(b.finish({"state": q["state"], "code": "the-code"}, (mine,)))
    assert got.subject == "alice" and got.next_url == "/next"
    _, _, kw = next(r for r in b._http.requests if r[1].endswith("/token"))  # type: ignore
    assert pkce_challenge(kw["data"]["code_verifier"]) == q["code_challenge"]
    for node in (a, b):  # replayed on either node: refused, the code never exchanged again
        with pytest.raises(LoginFailed, match="unknown, used already or expired"):
            result(node.finish({"state": q["state"], "code": "the-code"}, (mine,)))
    assert not any(r[1].endswith("/token") for r in a._http.requests)  # type: ignore
    # Still bound to the browser that began it, whichever node finishes it.
    q = dict(parse_qsl(urlsplit(result(a.begin("/next", browser=mine))).query))
    with pytest.raises(LoginFailed, match="begun in another browser"):
        result(b.finish({"state": q["state"], "code": "the-code"}, ("c" * 43,)))
    # And it expires with the login's time limit.
    q = dict(parse_qsl(urlsplit(result(a.begin("/next"))).query))
    clock.advance(a.settings.login_ttl)
    with pytest.raises(LoginFailed, match="expired"):
        result(b.finish({"state": q["state"], "code": "the-code"}))


def test_a_shared_store_that_is_down_makes_logins_unavailable_not_failed(key):
    a, b, clock, shared = nodes(key)
    q = dict(parse_qsl(urlsplit(result(a.begin("/next"))).query))
    shared.down = True
    with pytest.raises(LoginUnavailable):
        result(a.begin("/next"))
    with pytest.raises(LoginUnavailable):
        result(b.finish({"state": q["state"], "code": "the-code"}))
    shared.down = False
    claims_for(b, q, clock)
    assert result(b.finish({"state": q["state"], "code": "the-code"})).subject == "alice"


def test_a_flood_of_logins_keeps_each_nodes_bound_in_the_shared_store(key):
    a, b, clock, shared = nodes(key, max_pending=3, max_pending_bytes=10_000)
    states = [dict(parse_qsl(urlsplit(result(a.begin("/x"))).query))["state"]
              for _ in range(5)]
    assert set(shared.kept) == set(states[2:]) and shared.dropped == states[:2]
    other = dict(parse_qsl(urlsplit(result(b.begin("/x"))).query))["state"]
    assert other in shared.kept  # each node's bound is its own
    with pytest.raises(LoginFailed, match="state"):
        result(b.finish({"state": states[0], "code": "the-code"}))
    # Expired ones leave the bound by themselves (the store's TTL ends them there).
    clock.advance(a.settings.login_ttl)
    shared.dropped.clear()
    result(a.begin("/x"))
    assert shared.dropped == [] and len(a._begun) == 1
    # The bytes bound: long "next" pages push the oldest out sooner.
    long_next = "/" + "y" * 4000
    for _ in range(4):
        result(a.begin(long_next))
    assert len(a._begun) == 2 and a._begun.kept_bytes <= 10_000 and len(shared.dropped) == 3


def test_a_login_larger_than_the_nodes_bound_is_refused_before_it_is_kept(key):
    # Alone over max_pending_bytes, it was kept in the store and dropped at once: the
    # person came back from the issuer to "state unknown". Now it is refused up front.
    a, _, _, shared = nodes(key, max_pending_bytes=2000)
    with pytest.raises(LoginFailed, match=r"^this login cannot be kept: an entry of \d+ "
                                          r"bytes is over the table's bound of 2000 bytes$"):
        result(a.begin("/" + "y" * 2000))
    assert shared.kept == {} and shared.dropped == [] and len(a._begun) == 0
    assert result(a.begin("/x")) and len(shared.kept) == 1  # the others go on


# Logging out of the issuer (OpenID Connect RP-Initiated Logout 1.0) ----------------------

def test_a_login_that_asks_again_sends_prompt_login_and_no_other_does(key):
    rp, _, _ = make_rp(key)
    assert rp.can_ask_again
    q = dict(parse_qsl(urlsplit(result(rp.begin("/x", ask_again=True))).query))
    assert q["prompt"] == "login"
    assert "prompt" not in dict(parse_qsl(urlsplit(result(rp.begin("/x"))).query))


@pytest.mark.parametrize("listed, asks", [
    (None, True),  # no prompt_values_supported: Core's values
    (("login",), True), (("none", "login", "consent", "create"), True),
    ((), False), (("none", "consent", "select_account"), False)])
def test_prompt_login_only_where_the_issuer_does_not_leave_it_out(key, listed, asks):
    from dataclasses import replace

    rp, _, _ = make_rp(key)
    assert rp.metadata is not None
    rp.metadata = replace(rp.metadata, prompt_values=listed)
    assert rp.can_ask_again is asks
    q = dict(parse_qsl(urlsplit(result(rp.begin("/x", ask_again=True))).query))
    assert q.get("prompt") == ("login" if asks else None)


def test_the_discovery_documents_prompt_values():
    doc = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth",
           "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks"}
    assert ProviderMetadata.from_dict(doc, ISSUER).prompt_values is None
    for given, parsed in ((["none", "login"], ("none", "login")), ([], ()),
                          ("login", None), ([1], None)):
        meta = ProviderMetadata.from_dict({**doc, "prompt_values_supported": given}, ISSUER)
        assert meta.prompt_values == parsed
        assert meta.prompts_login is (parsed is None or "login" in parsed)


BACK = "https://gw.example.org/_connect/logged-out"


def logout_rp(key: Any, endpoint: str | None = ISSUER + "/logout",
              registered: tuple[str, ...] = (BACK,), **kw: Any) -> RelyingParty:
    from dataclasses import replace

    rp, _, _ = make_rp(key, post_logout_redirect_uri=BACK, **kw)
    assert rp.metadata is not None and rp.client is not None
    rp.metadata = replace(rp.metadata, end_session_endpoint=endpoint)
    rp.client = replace(rp.client, post_logout_redirect_uris=registered)
    return rp


def test_the_issuers_logout_url_names_the_client_the_token_and_the_way_back(key):
    rp = logout_rp(key)
    url = rp.logout_url(id_token="eyJ.a-b_c.d", state="s t&u=v/+")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == ISSUER + "/logout"
    assert dict(parse_qsl(parts.query, strict_parsing=True)) == {
        "client_id": "cid", "id_token_hint": "eyJ.a-b_c.d", "post_logout_redirect_uri": BACK,
        "state": "s t&u=v/+"}
    # every reserved character is percent-encoded: one value cannot become another field
    assert "state=s%20t%26u%3Dv%2F%2B" in parts.query
    assert "post_logout_redirect_uri=https%3A%2F%2Fgw.example.org%2F_connect%2Flogged-out" \
        in parts.query
    assert rp.issuer_host == "idp.example.org"


def test_the_issuers_logout_url_keeps_the_endpoints_own_query(key):
    rp = logout_rp(key, endpoint=ISSUER + "/oidc/logout?realm=a%20b")
    url = rp.logout_url()
    assert url is not None and url.startswith(ISSUER + "/oidc/logout?realm=a%20b&client_id=cid")
    assert "id_token_hint" not in url  # none given (a logout on another node): client_id only


def test_without_a_registered_way_back_the_issuer_shows_its_own_page(key):
    # A client registered before the gateway asked for its post-logout page (or by hand
    # without it): sending the page anyway would get an error page from the issuer.
    rp = logout_rp(key, registered=())
    q = dict(parse_qsl(urlsplit(rp.logout_url(id_token="t", state="s") or "").query))
    assert q == {"client_id": "cid", "id_token_hint": "t"}


def test_a_client_registered_by_hand_is_not_sent_back(key):
    # Its post-logout addresses at the issuer are not known: an unknown one would get an
    # error page from the issuer in place of its logout, so none is asked for.
    rp, _, _ = make_rp(key, client_id="by-hand", client_secret="s",
                       post_logout_redirect_uri=BACK)
    assert rp.metadata is not None
    client = result(Deferred.fromCoroutine(rp._ensure_client(rp.metadata)))
    assert client.static and client.post_logout_redirect_uris == ()
    rp.client = client
    from dataclasses import replace

    rp.metadata = replace(rp.metadata, end_session_endpoint=ISSUER + "/logout")
    q = dict(parse_qsl(urlsplit(rp.logout_url(id_token="t", state="s") or "").query))
    assert q == {"client_id": "by-hand", "id_token_hint": "t"}


def test_no_end_session_endpoint_no_logout_url(key):
    assert logout_rp(key, endpoint=None).logout_url(id_token="t") is None
    rp = logout_rp(key)
    rp.metadata = None  # the issuer not reached yet
    assert rp.logout_url() is None


class RegistrationHTTP:
    """Discovery (with an end_session_endpoint), registration (echoing what it kept), JWKS."""

    def __init__(self, key: Any, keeps_logout_uris: bool = True):
        self.key = key
        self.keeps = keeps_logout_uris
        self.registered: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        if url.endswith("/.well-known/openid-configuration"):
            return defer.succeed(FakeResponse(200, {
                "issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth",
                "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks",
                "registration_endpoint": ISSUER + "/register",
                "end_session_endpoint": ISSUER + "/logout"}))
        if url.endswith("/register"):
            self.registered.append(dict(kw["json"]))
            body = dict(kw["json"])
            if not self.keeps:
                body.pop("post_logout_redirect_uris", None)
            return defer.succeed(FakeResponse(201, {**body, "client_id": "new",
                                                    "client_secret": "s"}))
        return defer.succeed(FakeResponse(200, {"keys": []}))


@pytest.mark.parametrize("keeps", [True, False])
def test_a_registered_client_asks_for_the_post_logout_page(key, tmp_path, keeps: bool):
    http = RegistrationHTTP(key, keeps_logout_uris=keeps)
    settings = OIDCSettings(issuer=ISSUER, redirect_uri="https://gw/_connect/callback",
                            post_logout_redirect_uri=BACK, storage_root=str(tmp_path))
    rp = RelyingParty(settings, reactor=Clock(), http=http)
    result(rp.start())
    assert http.registered[0]["post_logout_redirect_uris"] == [BACK]
    kept = (BACK,) if keeps else ()
    assert rp.client is not None and rp.client.post_logout_redirect_uris == kept
    # kept in oidc-client.json: a restart reads it and registers nothing
    again = RelyingParty(settings, reactor=Clock(), http=http)
    result(again.start())
    assert len(http.registered) == 1
    assert again.client is not None and again.client.post_logout_redirect_uris == kept
    q = dict(parse_qsl(urlsplit(again.logout_url(state="s") or "").query))
    assert ("post_logout_redirect_uri" in q) is keeps


def test_a_client_file_from_before_has_no_post_logout_page():
    old = {"issuer": ISSUER, "client_name": "gw", "client_id": "cid", "client_secret": None,
           "redirect_uris": ["https://gw/_connect/callback"]}
    stored = ClientRegistration.from_dict(old)
    assert stored is not None and stored.post_logout_redirect_uris == ()


@pytest.mark.parametrize("earlier", [True, False])
def test_a_client_file_from_an_earlier_release_is_kept_and_the_start_says_so(
        key, tmp_path, earlier: bool):
    """An upgrade keeps the stored client (registered without the post-logout page); the
    start says what that means and what to do, once per start; a client this release
    registered (even one whose issuer dropped the page) gets no such line."""
    from twisted.logger import capturedLogs, formatEvent

    entry = {"issuer": ISSUER, "client_name": "gw", "client_id": "cid",
             "client_secret": "s", "redirect_uris": ["https://gw/_connect/callback"]}
    if not earlier:
        entry["post_logout_redirect_uris"] = []
    (tmp_path / "oidc-client.json").write_text(json.dumps(entry))
    http = RegistrationHTTP(key)
    settings = OIDCSettings(issuer=ISSUER, redirect_uri="https://gw/_connect/callback",
                            post_logout_redirect_uri=BACK, storage_root=str(tmp_path),
                            client_name="gw")
    rp = RelyingParty(settings, reactor=Clock(), http=http)
    with capturedLogs() as events:
        result(rp.start())
    assert http.registered == [] and rp.client is not None and rp.client.client_id == "cid"
    said = [formatEvent(e) for e in events if "earlier release" in formatEvent(e)]
    if earlier:
        assert said == [
            f"the OIDC client cid was registered by an earlier release, without {BACK} as a "
            "post-logout page: after the issuer's logout people stay on the issuer's page. "
            "To register again with it, stop every gateway that uses "
            f"{tmp_path / 'oidc-client.json'}, delete that file, and start them "
            "(docs/operators.md, Upgrade)"]
    else:
        assert said == []


def test_an_issuer_that_does_not_answer_the_code_exchange_is_try_again_shortly(key):
    """The issuer down at the callback: "Login unavailable ... try again shortly" (503),
    whose "Try again" leads to the page the login was for; it was "Login failed"."""
    from twisted.internet.error import ConnectionRefusedError

    from studios_gateway.auth.oidc import LoginUnavailable

    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    answer = http.request

    def down(method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        if url.endswith("/token"):
            return defer.fail(ConnectionRefusedError("127.0.0.1:1"))
        return answer(method, url, **kw)

    http.request = down  # type: ignore[method-assign]
    with pytest.raises(LoginUnavailable, match="could not be reached") as away:
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert away.value.next_url == "/next" and away.value.extra == {}


@pytest.mark.parametrize(("code", "away"), [(503, True), (404, False)])
def test_a_key_fetch_the_issuer_answers_with_an_error_is_away_only_for_a_server_error(
        key, code: int, away: bool):
    """The issuer's keys answered 503: away for a moment ("try again shortly"); answered
    404 (a wrong address, a lasting fault): not shown as a moment's absence."""
    from studios_gateway.auth.oidc import LoginUnavailable

    rp, clock, http = make_rp(key)
    q = begin(rp, http, clock)
    answer = http.request

    def keys(method: str, url: str, **kw: Any) -> Deferred[FakeResponse]:
        if url.endswith("/jwks"):
            return defer.succeed(FakeResponse(code, {"error": "x"}))
        return answer(method, url, **kw)

    http.request = keys  # type: ignore[method-assign]
    with pytest.raises(OIDCError, match=f"answered HTTP {code}") as failed:
        result(rp.finish({"state": q["state"], "code": "the-code"}))
    assert isinstance(failed.value, LoginUnavailable) is away
