"""Studio images: references, what their tag and name say, the admin API and CLI using them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from studios_gateway import cli
from studios_gateway.images import (
    InvalidImageReference,
    parse_image_reference,
    studio_image,
    tool_named_by,
)
from studios_gateway.management.api import make_api
from studios_gateway.management.sessions import Sessions
from studios_gateway.registry.base import (
    MalformedRecord,
    SessionRecord,
    TunnelHolder,
    hash_token,
)
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.versions import (
    CONNECT_PROTOCOL_VERSION,
    ConnectVersion,
    IncompatibleVersion,
    InvalidImageTag,
    parse_image_tag,
)
from tests.unit.test_api_sessions import call

DIGEST = "sha256:" + "ab" * 32


# References -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,registry,repository,tag,digest", [
    ("registry.example/data-studio-jupyter:4.2.5-u1-0.12.0", "registry.example",
     "data-studio-jupyter", "4.2.5-u1-0.12.0", None),
    ("public.cr.seqera.io/platform/data-studio-ride:2025.04.1-0.12", "public.cr.seqera.io",
     "platform/data-studio-ride", "2025.04.1-0.12", None),
    ("localhost:5000/vscode:1.93.1-0.12", "localhost:5000", "vscode", "1.93.1-0.12", None),
    (f"localhost/a/b/xpra:6.2-0.11@{DIGEST}", "localhost", "a/b/xpra", "6.2-0.11", DIGEST),
    ("[::1]:5000/my_jupyter__base:1-0.12", "[::1]:5000", "my_jupyter__base", "1-0.12", None),
    ("data-studio-jupyter:4.2.5-0.12", None, "data-studio-jupyter", "4.2.5-0.12", None),
    ("team/studio", None, "team/studio", None, None),
    (f"team/studio@{DIGEST}", None, "team/studio", None, DIGEST),
])
def test_references(text: str, registry: str | None, repository: str, tag: str | None,
                    digest: str | None) -> None:
    ref = parse_image_reference(text)
    assert (ref.text, ref.registry, ref.repository, ref.tag, ref.digest) == \
        (text, registry, repository, tag, digest)


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("reg.example/Data-Studio:1-0.12", "lowercase"),
    ("reg.example/data studio:1-0.12", "no spaces"),
    ("reg.example/jupyter:-1-0.12", "the tag"),
    ("reg.example/jupyter:" + "1" * 129, "the tag"),
    ("reg.example/jupyter:1-0.12@sha256:abc", "64 lowercase hex"),
    ("reg.example/jupyter:1-0.12@md5:" + "a" * 32, "sha256:<64 hex digits>"),
    ("reg.example/jupyter:1-0.12@", "sha256:<64 hex digits>"),
    ("reg.example//jupyter:1-0.12", "path part ''"),
    ("reg.example/jupyter-:1-0.12", "path part"),
    ("bad_host.example/jupyter:1-0.12", "registry host"),
    (":1-0.12", "repository name is missing"),
    ("reg.example/" + "a" * 300 + ":1-0.12", "longer than"),
    ("jupyter:4.2.5-0.12\n", "no spaces"),
    ("jüpyter:4.2.5-0.12", "non-ASCII"),
])
def test_bad_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidImageReference, match=re.escape(why)):
        parse_image_reference(text)


@pytest.mark.parametrize("name,tool", [
    ("data-studio-jupyter", "jupyterlab"), ("data-studio-jupyterlab", "jupyterlab"),
    ("data-studio-ride", "ride"), ("data-studio-rstudio", "ride"),
    ("data-studio-vscode", "vscode"), ("code-server", "vscode"), ("my_code-server.x", "vscode"),
    ("data-studio-xpra", "xpra"), ("xpra", "xpra"), ("jupyter-jupyterlab", "jupyterlab"),
    ("data-studio", None), ("generic", None), ("jupyterish", None), ("notebook", None),
])
def test_the_repository_name_may_name_the_tool(name: str, tool: str | None) -> None:
    assert tool_named_by(name) == tool


def test_a_name_naming_two_tools_is_ambiguous() -> None:
    with pytest.raises(InvalidImageReference, match="several tools .jupyterlab, vscode."):
        tool_named_by("jupyter-vscode")


def test_studio_image_reads_the_tag_and_checks_the_window() -> None:
    image = studio_image("registry.example/data-studio-jupyter:4.2.5-u1-0.12.0")
    assert (image.tool, image.tool_version, image.update_version, str(image.connect_version)) \
        == ("jupyterlab", "4.2.5", "u1", "0.12.0")
    with pytest.raises(InvalidImageReference, match="has no tag"):
        studio_image(f"registry.example/data-studio-jupyter@{DIGEST}")
    with pytest.raises(InvalidImageTag, match="not an image tag"):
        studio_image("registry.example/data-studio-jupyter:latest")
    with pytest.raises(IncompatibleVersion) as info:
        studio_image("registry.example/data-studio-jupyter:4.2.5-0.8.4")
    message = str(info.value)
    assert "Connect 0.8.4" in message and "(Connect 0.12.0)" in message
    assert "0.10, 0.11 and 0.12" in message and "data-studio-jupyter:4.2.5-0.8.4" in message


# Records ---------------------------------------------------------------------------------

OLD_RECORD = {"id": "s1", "workspace_id": None, "tool": "jupyterlab", "owner": "alice",
              "allowed_users": [], "ssh_enabled": False, "token_hash": hash_token("t" * 20),
              "created_at": 1.0}
OLD_HOLDER = {"session_id": "s1", "node_id": "n", "node_address": "a:1", "tunnel_id": "t",
              "client_version": "0.12.0", "tool_port": 8888, "bound_at": 2.0}


def test_records_and_holders_from_older_nodes_still_read() -> None:
    record = SessionRecord.from_json(json.dumps(OLD_RECORD))
    assert (record.image, record.tool_version, record.connect_version) == (None, None, None)
    assert TunnelHolder.from_json(json.dumps(OLD_HOLDER)).tool_version == ""


def test_image_fields_round_trip_and_are_checked() -> None:
    fields = {"image": "r.example/jupyter:4.2.5-u1-0.12.0", "tool_version": "4.2.5",
              "update_version": "u1", "connect_version": "0.12.0"}
    record = SessionRecord.from_json(json.dumps({**OLD_RECORD, **fields}))
    assert SessionRecord.from_json(record.to_json()) == record
    assert {k: getattr(record, k) for k in fields} == fields
    holder = TunnelHolder.from_json(json.dumps({**OLD_HOLDER, "tool_version": "4.2.5"}))
    assert TunnelHolder.from_json(holder.to_json()) == holder
    with pytest.raises(MalformedRecord, match="'tool_version'"):
        SessionRecord.from_json(json.dumps({**OLD_RECORD, "tool_version": 4}))
    with pytest.raises(MalformedRecord, match="'tool_version'"):
        TunnelHolder.from_json(json.dumps({**OLD_HOLDER, "tool_version": "x" * 65}))


# The admin API --------------------------------------------------------------------------

def api() -> tuple[Any, MemoryStore]:
    store = MemoryStore(Clock())
    return make_api(Sessions(store, clock=Clock()), lambda new: {"id": new.record.id}), store


def test_create_from_an_image_stores_and_shows_its_versions() -> None:
    a, store = api()
    ref = "registry.example/data-studio-jupyter:4.2.5-u1-0.12.0"
    status, body = call(a, "POST", "/api/sessions", {"id": "s1", "owner": "alice", "image": ref})
    assert status == 201, body
    status, shown = call(a, "GET", "/api/sessions/s1")
    assert (shown["tool"], shown["image"], shown["tool_version"], shown["update_version"],
            shown["connect_version"], shown["connected"]) == \
        ("jupyterlab", ref, "4.2.5", "u1", "0.12.0", False)
    listed = call(a, "GET", "/api/sessions")[1]["sessions"]
    assert listed == [shown]
    # The studio's bind announces its own versions: they win over the tag's.
    holder = TunnelHolder(session_id="s1", node_id="n", node_address="a:1", tunnel_id="t",
                          client_version="0.12.3", tool_port=8888, bound_at=3.0,
                          tool_version="4.2.6")
    store.claim_tunnel(holder, 30)
    shown = call(a, "GET", "/api/sessions/s1")[1]
    assert (shown["tool_version"], shown["connect_version"], shown["image"]) == \
        ("4.2.6", "0.12.3", ref)
    assert shown["tunnel"]["tool_version"] == "4.2.6"


@pytest.mark.parametrize("body,tool", [
    ({"image": "r.example/data-studio-rstudio:2025.04.1-0.12"}, "ride"),
    ({"image": "r.example/custom:1.2-0.11", "tool": "xpra"}, "xpra"),
    ({"image": "r.example/data-studio-jupyter:4.2.5-0.12", "tool": "rstudio"}, "ride"),
    ({"image": "r.example/jupyter-vscode:1-0.12", "tool": "vscode"}, "vscode"),
    ({"image": "r.example/custom:1.2-0.11"}, "generic"),
    ({"tool": "jupyter"}, "jupyterlab"),
    ({}, "generic"),
])
def test_the_tool_comes_from_tool_else_from_the_repository(body: dict, tool: str) -> None:
    a, _ = api()
    status, _ = call(a, "POST", "/api/sessions", {"id": "s1", "owner": "alice", **body})
    assert status == 201
    assert call(a, "GET", "/api/sessions/s1")[1]["tool"] == tool


@pytest.mark.parametrize("image,why", [
    ("r.example/data-studio-jupyter", "has no tag"),
    ("r.example/data-studio-jupyter:latest", "not an image tag"),
    ("r.example/Jupyter:4.2.5-0.12", "lowercase"),
    ("r.example/jupyter-vscode:1-0.12", "several tools"),
    (42, "image must be an image reference"),
    ("r.example/jupyter:4.2.5-0.13.0", "newer than this gateway"),
])
def test_bad_images_are_400_with_the_reason(image: Any, why: str) -> None:
    a, store = api()
    status, body = call(a, "POST", "/api/sessions", {"owner": "alice", "image": image})
    assert status == 400 and why in body["error"], body
    assert call(a, "GET", "/api/sessions")[1]["sessions"] == []


connect_versions = st.builds(ConnectVersion, st.integers(0, 3), st.integers(0, 30),
                             st.none() | st.integers(0, 50))


@given(connect_versions)
def test_the_api_accepts_exactly_the_window(v: ConnectVersion) -> None:
    a, _ = api()
    server = CONNECT_PROTOCOL_VERSION
    status, body = call(a, "POST", "/api/sessions",
                        {"owner": "alice", "image": f"r.example/data-studio-vscode:1.93.1-{v}"})
    in_window = v.major == server.major and server.minor - 2 <= v.minor <= server.minor
    if in_window:
        assert status == 201, body
    else:
        assert status == 400
        assert f"Connect {v} " in body["error"] and f"(Connect {server})" in body["error"]
        assert "supports Connect 0.10, 0.11 and 0.12" in body["error"]


# The CLI --------------------------------------------------------------------------------

def run(capsys: Any, *argv: str) -> tuple[int, list[str], list[str]]:
    code = cli.main(["image-tag", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_image_tag_prints_the_two_published_tags(capsys: Any) -> None:
    assert run(capsys, "4.2.5") == (0, ["4.2.5-0.12", "4.2.5-0.12.0"], [])
    assert run(capsys, "4.2.5", "--update", "u1") == (0, ["4.2.5-u1-0.12", "4.2.5-u1-0.12.0"],
                                                      [])
    assert run(capsys, "2025.04.1", "--connect", "0.11") == \
        (0, ["2025.04.1-0.11", "2025.04.1-0.11.0"], [])
    # Seed 000's own example: Connect 0.8.4 is pushed as 4.2.3-0.8 and 4.2.3-0.8.4.
    assert run(capsys, "4.2.3", "--connect", "0.8.4") == (0, ["4.2.3-0.8", "4.2.3-0.8.4"], [])


@pytest.mark.parametrize("argv,why", [
    (["4.2.5", "--update", "1"], "u<N>"),
    (["4.2.5", "--update", "u01"], "u<N>"),
    (["4.2.5-u1"], "update flag"),
    (["latest"], "no digits"),
    (["4.2 5"], "must be parts"),
    (["4.2.5", "--connect", "v1"], "Connect version"),
])
def test_image_tag_refuses_bad_input_in_one_line(capsys: Any, argv: list[str],
                                                 why: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith("studios-gateway: image-tag: ") and why in err[0]


tool_versions = st.from_regex(r"[0-9][A-Za-z0-9._]{0,8}(-[A-Za-z0-9][A-Za-z0-9._]{0,6}){0,2}",
                              fullmatch=True).filter(
    lambda t: not re.fullmatch(r"[uU][0-9]*", t.split("-")[-1]))  # (an update flag, refused)


@given(tool_versions, st.none() | st.integers(1, 999))
def test_image_tag_round_trips_through_the_parser(tool: str, update: int | None) -> None:
    import contextlib
    import io

    argv = ["image-tag", tool] + ([] if update is None else ["--update", f"u{update}"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    series, full = (parse_image_tag(line) for line in out.getvalue().splitlines())
    for tag in (series, full):
        assert (tag.tool_version, tag.update) == (tool, update)
        assert tag.connect.series == CONNECT_PROTOCOL_VERSION.series
    assert series.connect.patch is None and full.connect == CONNECT_PROTOCOL_VERSION
    assert str(series) == out.getvalue().splitlines()[0]


def test_the_bind_keeps_the_announced_tool_version_with_the_holder() -> None:
    from studios_gateway.tunnel.server import TunnelSettings, TunnelTable
    from studios_gateway.wire.bind import BindRequest

    store = MemoryStore(Clock())
    store.create(SessionRecord(id="s1", workspace_id=None, tool="jupyterlab", owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token("t" * 20), created_at=0.0))
    table = TunnelTable(store, node_id="n1", node_address="a:1", clock=Clock(),
                        settings=TunnelSettings())
    bound: list[Any] = []
    table.bind(BindRequest("s1", "t" * 20, "0.12.0", "jupyterlab", 8888, "4.2.5"),
               object, object()).addCallback(bound.append)
    assert bound and bound[0].holder.tool_version == "4.2.5"
    holders: list[Any] = []
    store.get_tunnel("s1").addCallback(holders.append)
    assert holders[0].tool_version == "4.2.5"


def test_the_embedded_registrys_file_keeps_the_image_fields(tmp_path: Any) -> None:
    path = tmp_path / "sessions.json"
    fields = {"image": "r.example/jupyter:4.2.5-u1-0.12.0", "tool_version": "4.2.5",
              "update_version": "u1", "connect_version": "0.12.0"}
    made = SessionRecord.from_dict({**OLD_RECORD, **fields})
    MemoryStore(Clock(), sessions_file=path).create(made)
    again: list[Any] = []
    MemoryStore(Clock(), sessions_file=path).get("s1").addCallback(again.append)
    assert again == [made]
