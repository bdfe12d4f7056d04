"""The whole login, end to end: Auth built from a Config, the in-repo IdP on 127.0.0.1,
a browser that follows redirects and keeps cookies, in both routing modes."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from studios_gateway.auth import Auth, ConfigurationError, Identity, Response
from studios_gateway.config_loading import load_config
from tests.support.auth_browser import LoginDriver
from tests.support.idp import DEFAULT_REGISTRATION_TOKEN, TestIdP, submit_login
from tests.unit.test_auth_authorizer import record, store_with

pytestmark = pytest.mark.slow

PROXY = "https://connect.example.test"


class FlowTests(TestCase):
    def setUp(self) -> None:
        self.idp = TestIdP(clock=reactor)
        port = self.idp.listen(reactor)
        self.addCleanup(port.stopListening)
        self.storage = tempfile.mkdtemp()
        self.store = store_with(record("abc", owner="alice", users=()),
                               record("xyz", owner="alice", users=()))

    def auth(self, path_routing: bool = False, token: str = DEFAULT_REGISTRATION_TOKEN) -> Auth:
        config = load_config(environ={
            "PLATFORM_URL": self.idp.issuer, "CONNECT_PROXY_URL": PROXY,
            "CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN": token,
            "CONNECT_STORAGE_ROOT": self.storage,
            "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": "true" if path_routing else "false"})
        auth = Auth.from_config(config, self.store, reactor=reactor)
        self.addCleanup(auth.stop)
        return auth

    def browser(self, auth: Auth, user: str) -> LoginDriver:
        async def provider(url: str) -> str:
            return await submit_login(url, {"username": user,
                                            "password": self.idp.users[user]})
        return LoginDriver(auth, external=provider)

    def test_subdomain_mode(self) -> Any:
        async def go() -> None:
            auth = self.auth()
            await auth.start()
            alice = self.browser(auth, "alice")
            who, url = await alice.open("https://abc.connect.example.test/lab?token=x")
            self.assertIsInstance(who, Identity)
            self.assertEqual((who.subject, who.session_id), ("alice", "abc"))
            self.assertEqual(url, "https://abc.connect.example.test/lab?token=x")
            self.assertTrue(any(v.startswith(self.idp.issuer) for v in alice.visited))
            # Bob logs in fine but is not allowed on alice's studio ...
            bob = self.browser(auth, "bob")
            resp, _ = await bob.open("https://abc.connect.example.test/")
            self.assertIsInstance(resp, Response)
            self.assertEqual(resp.status, 403)
            # ... until the Platform says he may use xyz (the access call, real HTTP).
            self.idp.access[("xyz", "bob")] = True
            who, _ = await bob.open("https://xyz.connect.example.test/")
            self.assertEqual((who.subject, who.reason), ("bob", "platform"))
            self.assertEqual(self.idp.counts["access"], 2)
        return ensureDeferred(go())

    def test_path_mode(self) -> Any:
        async def go() -> None:
            auth = self.auth(path_routing=True)
            await auth.start()
            alice = self.browser(auth, "alice")
            who, url = await alice.open(f"{PROXY}/_studio/abc/lab")
            self.assertIsInstance(who, Identity)
            self.assertEqual(url, f"{PROXY}/_studio/abc/lab")
            self.assertIn(("connect.example.test", "/_studio/abc/", "connect_session"),
                          alice.jar.cookies)
        return ensureDeferred(go())

    def test_registration_survives_restart(self) -> Any:
        async def go() -> None:
            first = self.auth()
            await first.start()
            await first.stop()
            second = self.auth()
            await second.start()
            self.assertEqual(self.idp.counts["registrations"], 1)
            who, _ = await self.browser(second, "alice").open(
                "https://abc.connect.example.test/")
            self.assertIsInstance(who, Identity)
        return ensureDeferred(go())

    def test_wrong_initial_access_token_stops_the_start(self) -> Any:
        async def go() -> None:
            auth = self.auth(token="wrong")
            with self.assertRaises(ConfigurationError) as e:
                await auth.start()
            self.assertIn("CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN", str(e.exception))
        return ensureDeferred(go())
