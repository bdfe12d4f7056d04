"""An OpenID Connect login across nodes, with real processes: the in-repo IdP as its own
process and two `twistd` gateways on one real redis-server, behind "one load balancer"
(both have node A's address as CONNECT_PROXY_URL, so one OpenID client and one
redirect URI), sharing the storage root and CONNECT_PEER_SECRET.

The login begins on node A (state, nonce and PKCE verifier made there); the issuer's
redirect to the callback lands on node B, which must finish it (the pending login is in
Redis, not in node A's memory). The same callback again, on node A, is refused: the
pending login is taken once, whichever node takes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest

from tests.support.idp import _Form
from tests.support.login import USERS, Gateway, IdPProcess, oidc_env, redis_nodes
from tests.support.redis_server import RedisServer, redis_available
from tests.support.waiting import wait_until
from tests.support.web import Browser, Reply

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

LOGIN_COOKIE = "connect_login"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[IdPProcess, RedisServer, Gateway, Gateway]]:
    idp = IdPProcess(tmp_path)
    redis = RedisServer(tmp_path / "redis")
    try:
        redis.start()
        with redis_nodes(tmp_path, "a", "b", one_url=True, redis=redis,
                         CONNECT_PEER_SECRET="cluster-oidc-peer-secret",
                         **oidc_env(idp)) as (a, b):
            yield idp, redis, a, b
    finally:
        redis.stop()
        idp.stop()


def on_node(url: str, node: Gateway) -> str:
    """`url` (on the shared public address) as the load balancer hands it to `node`."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"localhost:{node.http_port}").geturl()


def callback_from_idp(browser: Browser, begun: Reply, user: str = "alice") -> str:
    """The login at the issuer, from node A's redirect there: where the issuer sends the
    browser back (the gateway's callback, on the shared public address)."""
    assert begun.status == 302, (begun.status, begun.text[:300])
    form_page = browser.get(begun.headers["Location"])
    assert form_page.status == 200 and "<form" in form_page.text
    form = _Form()
    form.feed(form_page.text)
    answer = browser.request(
        urljoin(form_page.url, form.action or ""), method="POST", follow=False,
        body=urlencode({**form.fields, "username": user, "password": USERS[user]}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status in (302, 303), (answer.status, answer.text[:300])
    callback = answer.headers["Location"]
    assert urlsplit(callback).path == "/_connect/callback", callback
    assert "state" in dict(parse_qsl(urlsplit(callback).query))
    return callback


def test_a_login_begun_on_one_node_finishes_on_another_and_only_once(
        cluster: tuple[IdPProcess, RedisServer, Gateway, Gateway]) -> None:
    idp, _, a, b = cluster
    alice = Browser()
    # Node A begins the login; the browser goes to the issuer and logs in there.
    begun = alice.get(f"{a.proxy}/_connect/login?next=/somewhere", follow=False)
    assert begun.headers["Location"].startswith(idp.issuer), begun.headers["Location"]
    callback = callback_from_idp(alice, begun)

    # The load balancer hands the callback to node B: it finishes the login.
    finished = alice.get(on_node(callback, b), follow=False)
    assert finished.status == 302, (finished.status, finished.text[:500])
    assert "/somewhere" in finished.headers["Location"], finished.headers["Location"]
    assert LOGIN_COOKIE in alice.cookies["localhost"], alice.cookies

    # The same callback again, now on node A (where the login began): refused, its code
    # never exchanged again. In a browser that is not logged in and began no login there,
    # "Login failed", in plain words.
    exchanged = idp.counts()["token"]
    replay = Browser().get(on_node(callback, a), follow=False)
    assert replay.status == 400, (replay.status, replay.text[:300])
    assert "This login was finished already" in replay.text, replay.text[:500]
    # In alice's own browser (the Back button to the issuer): on to the page her login
    # was for, through the login she has (no issuer, no new login).
    back = Browser(cookies={"localhost": dict(alice.cookies["localhost"])}).get(
        on_node(callback, a), follow=False)
    assert back.status == 302, (back.status, back.text[:300])
    assert urlsplit(back.headers["Location"]).path == "/_connect/login"
    assert dict(parse_qsl(urlsplit(back.headers["Location"]).query))["next"] == "/somewhere"
    # Logged in, but without the page of a login begun in this browser (one begun before
    # that cookie was set): "Logged in", naming the user, no cookie set.
    began_none = {k: v for k, v in alice.cookies["localhost"].items()
                  if not k.endswith("connect_return")}
    again = Browser(cookies={"localhost": began_none}).get(on_node(callback, a), follow=False)
    assert again.status == 200, (again.status, again.text[:300])
    assert "this browser is logged in as alice" in again.text, again.text[:500]
    assert not any(k.lower() == "set-cookie" for k in again.headers), again.headers
    assert idp.counts()["token"] == exchanged


def test_while_redis_is_down_a_login_says_try_again_and_works_once_it_is_back(
        cluster: tuple[IdPProcess, RedisServer, Gateway, Gateway]) -> None:
    _, redis, a, b = cluster
    alice = Browser()
    callback = callback_from_idp(
        alice, alice.get(f"{a.proxy}/_connect/login?next=/somewhere", follow=False))
    redis.kill()
    for reply in (alice.get(on_node(callback, b), follow=False),
                  Browser().get(f"{a.proxy}/_connect/login?next=/somewhere", follow=False)):
        assert reply.status == 503, (reply.status, reply.text[:500])
        assert "Login is unavailable for a moment; try again shortly" in reply.text
        assert reply.headers["Retry-After"] == "5"
    for node in (a, b):
        wait_until(lambda n=node: "a login could not go on: " in n.gw.output(),  # type: ignore
                   "the node logs why")
    redis.start()
    for node in (a, b):  # each node's store reconnects on its own
        wait_until(lambda n=node: Browser().get(  # type: ignore[misc]
            f"{n.proxy}/_connect/login", follow=False).status == 302,
            "the node begins logins again once Redis is back")
    bob = Browser()
    callback = callback_from_idp(
        bob, bob.get(f"{a.proxy}/_connect/login?next=/", follow=False), "bob")
    finished = bob.get(on_node(callback, b), follow=False)
    assert finished.status == 302 and LOGIN_COOKIE in bob.cookies["localhost"], \
        (finished.status, finished.text[:500])
