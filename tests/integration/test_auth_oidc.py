"""oidc.py against real OpenID providers on 127.0.0.1: the in-repo IdP and a PyPI one."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from studios_gateway.auth.oidc import (
    CLIENT_FILE,
    ConfigurationError,
    LoginFailed,
    OIDCSettings,
    RelyingParty,
)
from tests.support.idp import DEFAULT_REGISTRATION_TOKEN, TestIdP, http_client, submit_login
from tests.support.ports import free_port, wait_for_port

pytestmark = pytest.mark.slow

REDIRECT = "https://connect.example.test/_connect/callback"


async def browser_login(authorize_url: str, fields: dict[str, str]) -> dict[str, str]:
    """Open the provider's login page, fill the form, return the callback's query."""
    location = await submit_login(authorize_url, fields)
    assert location.startswith(REDIRECT), location
    return dict(parse_qsl(urlsplit(location).query))


class InRepoIdPTests(TestCase):
    def setUp(self) -> None:
        self.idp = TestIdP(clock=reactor)
        self.port = self.idp.listen(reactor)
        self.addCleanup(self.port.stopListening)
        self.storage = tempfile.mkdtemp()

    def rp(self, **kw: Any) -> RelyingParty:
        settings = dict(issuer=self.idp.issuer, redirect_uri=REDIRECT, storage_root=self.storage,
                        registration_token=DEFAULT_REGISTRATION_TOKEN, timeout=5.0)
        settings.update(kw)
        rp = RelyingParty(OIDCSettings(**settings), reactor=reactor, http=http_client())
        return rp

    async def login(self, rp: RelyingParty, user: str = "alice", next_url: str = "/x") -> Any:
        query = await browser_login(await rp.begin(next_url), {
            "username": user, "password": self.idp.users[user]})
        return await rp.finish(query), query

    def test_register_login_and_reuse_after_restart(self) -> Any:
        async def go() -> None:
            rp = self.rp()
            await rp.start()
            self.assertEqual(self.idp.counts["registrations"], 1)
            path = Path(self.storage) / CLIENT_FILE
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertEqual(json.loads(path.read_text())["client_id"], rp.client.client_id)
            result, _ = await self.login(rp, next_url="https://abc.example.test/lab")
            self.assertEqual(result.subject, "alice")
            self.assertEqual(result.next_url, "https://abc.example.test/lab")
            self.assertIsNotNone(result.tokens.refresh_token)

            # A "restart": a new RP object reads the stored client, registers nothing.
            again = self.rp()
            await again.start()
            self.assertEqual(self.idp.counts["registrations"], 1)
            self.assertEqual(again.client.client_id, rp.client.client_id)
            result, _ = await self.login(again, user="bob")
            self.assertEqual(result.subject, "bob")

            # The redirect URI changed: register anew.
            moved = self.rp(redirect_uri="https://other.example.test/_connect/callback")
            await moved.start()
            self.assertEqual(self.idp.counts["registrations"], 2)
            self.assertNotEqual(moved.client.client_id, rp.client.client_id)
        return ensureDeferred(go())

    def test_wrong_initial_access_token_stops_the_start(self) -> Any:
        async def go() -> None:
            with self.assertRaises(ConfigurationError) as e:
                await self.rp(registration_token="not-the-token").start()
            msg = str(e.exception)
            self.assertIn("CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN", msg)
            self.assertIn("HTTP 401", msg)
            self.assertNotIn("not-the-token", msg)
            self.assertFalse((Path(self.storage) / CLIENT_FILE).exists())
        return ensureDeferred(go())

    def test_static_client_skips_registration(self) -> Any:
        async def go() -> None:
            rp = self.rp()
            await rp.start()
            static = self.rp(client_id=rp.client.client_id,
                             client_secret=rp.client.client_secret, storage_root=tempfile.mkdtemp(),
                             registration_token=None)
            await static.start()
            self.assertEqual(self.idp.counts["registrations"], 1)
            result, _ = await self.login(static)
            self.assertEqual(result.subject, "alice")
        return ensureDeferred(go())

    def test_replayed_state_and_code_refused(self) -> Any:
        async def go() -> None:
            rp = self.rp()
            await rp.start()
            _, query = await self.login(rp)
            with self.assertRaises(LoginFailed):  # the same callback again: state is spent
                await rp.finish(query)
            # The spent code under a fresh, valid state: the provider refuses it.
            fresh_state = dict(parse_qsl(urlsplit(await rp.begin("/")).query))["state"]
            with self.assertRaises(LoginFailed) as e:
                await rp.finish({"state": fresh_state, "code": query["code"]})
            self.assertIn("invalid_grant", str(e.exception))
            with self.assertRaises(LoginFailed):  # a state we never issued
                await rp.finish({"state": "forged", "code": "x"})
        return ensureDeferred(go())

    def test_wrong_nonce_or_audience_refused(self) -> Any:
        async def go() -> None:
            rp = self.rp()
            await rp.start()
            self.idp.claim_overrides = {"nonce": "someone-elses"}
            with self.assertRaises(LoginFailed) as e:
                await self.login(rp)
            self.assertIn("nonce", str(e.exception))
            self.idp.claim_overrides = {"aud": "another-client"}
            with self.assertRaises(LoginFailed):
                await self.login(rp)
            self.idp.claim_overrides = {"iss": "https://evil.example.test"}
            with self.assertRaises(LoginFailed):
                await self.login(rp)
        return ensureDeferred(go())

    def test_key_rotation_refetches_jwks(self) -> Any:
        async def go() -> None:
            rp = self.rp(jwks_min_refresh=0.0)
            await rp.start()
            fetched = self.idp.counts["jwks"]
            self.idp.rotate_key(keep_old=False)
            result, _ = await self.login(rp)
            self.assertEqual(result.subject, "alice")
            self.assertEqual(self.idp.counts["jwks"], fetched + 1)
        return ensureDeferred(go())

    def test_unknown_key_refetch_is_rate_limited(self) -> Any:
        async def go() -> None:
            rp = self.rp(jwks_min_refresh=3600.0)
            await rp.start()
            fetched = self.idp.counts["jwks"]
            self.idp.rotate_key(keep_old=False)
            with self.assertRaises(LoginFailed):
                await self.login(rp)
            self.assertEqual(self.idp.counts["jwks"], fetched)
        return ensureDeferred(go())

    def test_refresh(self) -> Any:
        async def go() -> None:
            rp = self.rp()
            await rp.start()
            result, _ = await self.login(rp)
            new = await rp.refresh(result.tokens)
            self.assertNotEqual(new.refresh_token, result.tokens.refresh_token)
            with self.assertRaises(LoginFailed):  # the old refresh token was rotated away
                await rp.refresh(result.tokens)
        return ensureDeferred(go())

    def test_unreachable_issuer_is_a_clear_error(self) -> Any:
        async def go() -> None:
            rp = self.rp(issuer=f"http://127.0.0.1:{free_port()}")
            with self.assertRaises(Exception) as e:
                await rp.start()
            self.assertIn("OpenID discovery", str(e.exception))
        return ensureDeferred(go())


class PyPIProviderTests(TestCase):
    """Interoperability with an independent implementation: oidc-provider-mock (authlib)."""

    def setUp(self) -> None:
        if importlib.util.find_spec("oidc_provider_mock") is None:
            raise pytest.skip.Exception("oidc-provider-mock is not installed")
        port = free_port()
        self.log = tempfile.NamedTemporaryFile(suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "oidc_provider_mock", "--host", "127.0.0.1",
             "--port", str(port), "--require-registration", "true", "--require-nonce", "true"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop)
        wait_for_port(port, proc=self.proc)
        self.issuer = f"http://127.0.0.1:{port}"
        self.storage = tempfile.mkdtemp()

    def _stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()

    def test_login_against_oidc_provider_mock(self) -> Any:
        async def go() -> None:
            settings = OIDCSettings(issuer=self.issuer, redirect_uri=REDIRECT,
                                    storage_root=self.storage, registration_token="unused",
                                    timeout=10.0)
            rp = RelyingParty(settings, reactor=reactor, http=http_client())
            await rp.start()
            query = await browser_login(await rp.begin("/lab"), {"sub": "carol"})
            result = await rp.finish(query)
            self.assertEqual(result.subject, "carol")
            self.assertEqual(result.next_url, "/lab")
            again = RelyingParty(settings, reactor=reactor, http=http_client())
            await again.start()
            self.assertEqual(again.client.client_id, rp.client.client_id)
            with self.assertRaises(LoginFailed):
                await rp.finish(query)
            self.assertTrue(re.fullmatch(r"[0-9a-f-]{36}", rp.client.client_id))
        return ensureDeferred(go())
