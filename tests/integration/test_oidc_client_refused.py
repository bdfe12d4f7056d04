"""An operator's OpenID mistakes, with real processes (`twistd studios-gateway`, the test
IdP as its own process, `studios-gateway check-config --connect`): an issuer address that
answers nothing, and a client the issuer no longer accepts (its secret changed there, or
the issuer forgot it). check-config says each in one line before the start; a login then
gets a page that tells the person it is not their doing, and the log an error that says
what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import REPO
from tests.support.idp import DEFAULT_REGISTRATION_TOKEN
from tests.support.login import Gateway, IdPProcess, idp_and_gateway, login_at_idp
from tests.support.ports import free_port
from tests.support.web import Browser

pytestmark = pytest.mark.slow

WRONG = "not-the-client-secret-4711"


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "studios_gateway.cli", "check-config", "-q",
                           "--connect"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[IdPProcess, Gateway]]:
    with idp_and_gateway(tmp_path) as both:
        yield both


def test_an_issuer_that_answers_nothing_is_said_by_check_config(
        gateway: tuple[IdPProcess, Gateway]) -> None:
    idp, g = gateway
    ok = check_config(g.env)
    assert ok.returncode == 0, ok.stderr
    assert f"OpenID issuer {idp.issuer}: discovery answered" in ok.stdout
    assert "its JWKS has 1 signing key(s)" in ok.stdout
    assert "is accepted (a made-up code exchange was refused (HTTP 400: invalid_grant" \
        in ok.stdout, ok.stdout
    # A port nothing listens on (a typo): before, "configuration OK".
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = check_config({**g.env, "PLATFORM_URL": nowhere})
    assert down.returncode == 2
    assert down.stderr.startswith(
        f"studios-gateway: OpenID discovery at {nowhere}/.well-known/openid-configuration "
        f"failed: {nowhere} cannot be reached: the gateway would start, and every login fail "
        "until the issuer answers"), down.stderr
    # A path that is not the issuer's: the start's own refusal, in its words.
    wrong_path = check_config({**g.env, "PLATFORM_URL": idp.issuer + "/api"})
    assert wrong_path.returncode == 2
    assert "openid-configuration answered HTTP 404" in wrong_path.stderr


def test_a_client_the_issuer_refuses_is_the_operators_error_not_the_users(
        gateway: tuple[IdPProcess, Gateway]) -> None:
    idp, g = gateway
    sid = g.studio()["id"]
    client_file = g.tmp_path / "storage" / "oidc-client.json"
    kept = json.loads(client_file.read_text())
    # The issuer changed the client's secret (or forgot the client): the file is stale.
    client_file.write_text(json.dumps({**kept, "client_secret": WRONG}))
    g.restart()
    # The start asks the issuer nothing of the client (a failed exchange in the issuer's
    # own log at every start); check-config --connect does.
    assert "made-up code" not in g.gw.output()

    said = check_config(g.env)
    assert said.returncode == 2
    assert (f"HTTP 401: invalid_client (client authentication failed)): the issuer does not "
            f"accept the client {kept['client_id']} registered in {client_file}") in said.stderr
    assert "delete it, and start them to register again" in said.stderr
    assert WRONG not in said.stdout + said.stderr

    browser = Browser()
    landed = login_at_idp(browser, g.url(sid, "/api/info"), "alice")
    # Before: 400 "Login failed: the code exchange was refused (HTTP 401: invalid_client
    # ...)" with "Try again", which failed the same way, and one warning a minute shared
    # with everybody's refused logins.
    assert landed.status == 502, (landed.status, landed.text[:500])
    assert "Login unavailable" in landed.text and "tell your administrator" in landed.text
    assert "Try again" not in landed.text
    log = g.gw.output()
    line = next(ln for ln in log.splitlines() if "a login was refused: the code exchange" in ln)
    assert "#error] a login was refused" in line, line
    assert f"registered in {client_file}" in line and "register again" in line, line
    assert WRONG not in log

    # Put right (here: the issuer's secret back in the file), check-config says so.
    client_file.write_text(json.dumps(kept))
    ok = check_config(g.env)
    assert ok.returncode == 0 and f"the client {kept['client_id']} is accepted" in ok.stdout


def test_a_client_set_by_hand_is_tried_with_its_secret_and_its_redirect_uri(
        gateway: tuple[IdPProcess, Gateway]) -> None:
    idp, g = gateway
    callback = g.env["CONNECT_PROXY_URL"] + "/_connect/callback"
    asked = urllib.request.Request(
        f"{idp.issuer}/register", method="POST",
        data=json.dumps({"client_name": "by hand", "redirect_uris": [callback],
                         "token_endpoint_auth_method": "client_secret_basic"}).encode(),
        headers={"Authorization": f"Bearer {DEFAULT_REGISTRATION_TOKEN}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        client = json.loads(answer.read())
    by_hand = {**g.env, "CONNECT_OIDC_CLIENT_ID": client["client_id"],
               "CONNECT_OIDC_CLIENT_SECRET": client["client_secret"]}
    ok = check_config(by_hand)
    assert ok.returncode == 0 and "authorization endpoint" not in ok.stdout, ok.stdout
    assert f"the client {client['client_id']} is accepted" in ok.stdout

    wrong = check_config({**by_hand, "CONNECT_OIDC_CLIENT_SECRET": WRONG})
    assert wrong.returncode == 2
    assert wrong.stderr.strip().endswith(
        f"the issuer does not accept the client {client['client_id']}: check "
        "CONNECT_OIDC_CLIENT_ID and CONNECT_OIDC_CLIENT_SECRET"), wrong.stderr
    assert WRONG not in wrong.stdout + wrong.stderr

    # Another public address than the one registered: the issuer would refuse every
    # login on its own page, which the gateway never sees. A warning (the issuer's answer
    # to a login request is all there is to go by).
    elsewhere = f"http://localhost:{free_port()}"
    moved = check_config({**by_hand, "CONNECT_PROXY_URL": elsewhere})
    assert moved.returncode == 0
    assert (f"warning: the issuer's authorization endpoint answered HTTP 400 to a login for "
            f"the client {client['client_id']} with the redirect URI {elsewhere}"
            "/_connect/callback: is that address") in moved.stdout, moved.stdout
