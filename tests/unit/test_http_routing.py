"""Routing by Host and path: examples and properties."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.http.routing import (
    Mode,
    Redirect,
    Refusal,
    Route,
    Router,
    absolute_to_origin,
    parse_host,
)
from studios_gateway.wire.ids import SESSION_ID

R = Router(studios_domain="studios.example.com", proxy_host="studios.example.com")
P = Router(studios_domain="studios.example.com", proxy_host="studios.example.com",
           path_routing=True)
ids = st.from_regex(SESSION_ID, fullmatch=True)
paths = st.text(alphabet=string.ascii_letters + string.digits + "/-._~%?=&", max_size=40).map(
    lambda s: "/" + s)


def test_subdomain_route() -> None:
    r = R.route("AbC-1.Studios.Example.com:8443", "/lab?x=1")
    assert r == Route("abc-1", Mode.SUBDOMAIN, "/lab?x=1", "/")


def test_path_route_and_redirect() -> None:
    assert P.route("studios.example.com", "/_studio/abc/lab") == Route(
        "abc", Mode.PATH, "/_studio/abc/lab", "/_studio/abc/")
    assert P.route("studios.example.com", "/_studio/abc") == Redirect("/_studio/abc/")
    assert P.route("studios.example.com", "/_studio/abc?a=b") == Redirect("/_studio/abc/?a=b")


def test_path_mode_refuses_per_studio_host_names() -> None:
    r = P.route("abc.studios.example.com", "/lab")
    assert isinstance(r, Refusal) and (r.status, r.reason) == (404, "path-mode-host")
    assert "studios.example.com/_studio/abc/" in r.detail
    # and subdomain mode does not serve paths on the proxy host, but says where the
    # studio is (it said "This address is the studios gateway, which has no page")
    r = R.route("studios.example.com", "/_studio/abc/lab?x=1")
    assert isinstance(r, Refusal) and (r.status, r.reason) == (404, "subdomain-mode-path")
    assert r.detail == ("This gateway serves studios by host name, not by path: open "
                        "abc.studios.example.com/ instead.") and r.session_id == "abc"
    assert R.route("studios.example.com", "/_studio/abc").reason == "subdomain-mode-path"  # type: ignore[union-attr]
    assert R.route("studios.example.com", "/_studio/-x/").reason == "not-a-studio"  # type: ignore[union-attr]


def test_refusals() -> None:
    assert R.route("bad host", "/").status == 400  # type: ignore[union-attr]
    assert R.route("", "/").status == 400  # type: ignore[union-attr]
    assert R.route("a.b.studios.example.com", "/").status == 404  # type: ignore[union-attr]
    assert R.route("x_y.studios.example.com", "/").status == 400  # type: ignore[union-attr]
    assert R.route("other.example.org", "/").status == 404  # type: ignore[union-attr]
    assert R.route("studios.example.com", "/").reason == "not-a-studio"  # type: ignore[union-attr]
    # The gateway's own address says where studios are (it said "There is nothing here.").
    assert "Open your studio with the address or login link you were given." in \
        P.route("studios.example.com", "/").detail  # type: ignore[union-attr]
    assert P.route("studios.example.com", "/_studio/ABC/").status == 404  # type: ignore[union-attr]
    assert P.route("studios.example.com", "/_studio/abc/../x/").status == 400  # type: ignore
    assert P.route("studios.example.com", "/_studio/abc/%2E%2e/x").status == 400  # type: ignore
    assert R.route("abc.studios.example.com", "*").status == 400  # type: ignore[union-attr]
    # One session-id grammar everywhere (wire/ids.py): no id starts with '-'.
    assert isinstance(R.route("-abc.studios.example.com", "/"), Refusal)
    assert isinstance(P.route("studios.example.com", "/_studio/-abc/"), Refusal)


def test_parse_host() -> None:
    assert parse_host("Example.COM.:80") == "example.com"
    assert parse_host("[::1]:8080") == "[::1]"
    for bad in ("a b", "a:b", "a:99999", "a:", "[::1", "ex ample", "a/b", "a@b", " a", "a..b"):
        assert parse_host(bad) is None, bad


def test_absolute_form() -> None:
    assert absolute_to_origin("http://a.example.com/x?y", "a.example.com") == "/x?y"
    assert absolute_to_origin("http://b.example.com/x", "a.example.com") is None
    assert absolute_to_origin("ftp://a.example.com/x", "a.example.com") is None
    assert absolute_to_origin("http://u@a.example.com/x", "a.example.com") is None


@given(ids, paths, st.sampled_from(["", ":80", ":65535"]), st.booleans())
def test_any_valid_subdomain_routes_to_its_id(sid: str, path: str, port: str,
                                              upper: bool) -> None:
    host = f"{sid}.studios.example.com{port}"
    r = R.route(host.upper() if upper else host, path)
    assert r == Route(sid, Mode.SUBDOMAIN, path, "/")


@given(ids, paths)
def test_any_path_under_a_studio_routes_to_its_id(sid: str, path: str) -> None:
    target = f"/_studio/{sid}{path}"
    r = P.route("studios.example.com", target)
    if isinstance(r, Route):
        assert r.session_id == sid and r.mode is Mode.PATH
        assert r.upstream_target == target and target.startswith(r.prefix)
    elif isinstance(r, Redirect):
        assert r.location.startswith(f"/_studio/{sid}/")
    else:
        assert r.status == 400 and r.reason == "bad-target"


@given(st.text(max_size=80), st.text(max_size=80))
def test_hostile_input_never_crashes_and_routes_only_valid_ids(host: str, target: str) -> None:
    r = R.route(host, target)
    assert isinstance(r, Route | Redirect | Refusal)
    if isinstance(r, Route):
        assert SESSION_ID.fullmatch(r.session_id)
        assert parse_host(host) is not None


@given(st.text(alphabet=string.printable, max_size=60))
def test_parse_host_is_strict(value: str) -> None:
    h = parse_host(value)
    if h is not None:
        assert h == h.lower() and " " not in h and "/" not in h and "@" not in h


def test_the_host_memory_takes_new_studios_after_many_made_up_hosts() -> None:
    # Kept full once 1024 host names had been seen (a scanner's made-up <id>.<domain>
    # too): every studio after those was worked out from its Host at each request (soak53).
    from studios_gateway.http.routing import _STUDIO_HOSTS_MAX

    r = Router(studios_domain="studios.example.com", proxy_host="studios.example.com")
    for n in range(_STUDIO_HOSTS_MAX + 5):
        r.route(f"scan{n}.studios.example.com", "/")
    assert len(r._studio_hosts) <= _STUDIO_HOSTS_MAX
    host = "abcd1234.studios.example.com"
    assert r.route(host, "/x") == Route("abcd1234", Mode.SUBDOMAIN, "/x", "/")
    assert r._studio_hosts.get(host) == "abcd1234"
    assert r.route(host, "/y") == Route("abcd1234", Mode.SUBDOMAIN, "/y", "/")
