"""A peer link tried when another node is first seen in the registry (peers.probe), and
the node's peer address in its cluster settings record."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.task import Clock

from studios_gateway.peers.link import PeerUnavailable
from studios_gateway.peers.probe import PeerProbe
from studios_gateway.registry.node_settings import INSTANCE, PEER_ADDRESS, NodeSettingsWatch
from tests.unit.test_node_settings import A, FakeStore

SECRET_DIFFERS = ("the peer refused us: peer authentication failed (CONNECT_PEER_SECRET "
                  "differs between the nodes?)")


class Links:
    """pool.connect as the probe calls it: each call recorded, answered by hand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, defer.Deferred[object]]] = []

    def __call__(self, address: str, node: str) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        self.calls.append((address, node, d))
        return d


def node(instance: str, address: str = "10.0.0.6:7777") -> dict[str, str]:
    return {**A, INSTANCE: instance, PEER_ADDRESS: address}


def test_each_process_of_a_node_is_tried_once_and_a_refusal_is_shown_until_it_works() -> None:
    links = Links()
    probe = PeerProbe(links)
    probe.seen([("node-b", node("1"))])
    assert [(a, n) for a, n, _ in links.calls] == [("10.0.0.6:7777", "node-b")]
    assert probe.state() == "ok"  # not known yet
    links.calls[0][2].errback(PeerUnavailable("10.0.0.6:7777", SECRET_DIFFERS))
    state = probe.state()
    assert state.startswith("no link to 1 other node(s): node node-b: the peer refused us")
    assert "CONNECT_PEER_SECRET" in state and "still ready" in state
    probe.seen([("node-b", node("1"))])  # the same process, compared again: not tried again
    assert len(links.calls) == 1
    probe.seen([("node-b", node("2"))])  # restarted (with the secret fixed)
    assert len(links.calls) == 2
    links.calls[1][2].callback(object())
    assert probe.state() == "ok"
    probe.seen([("node-b", node("2", "10.0.0.7:7777"))])  # another address: tried there
    assert links.calls[2][:2] == ("10.0.0.7:7777", "node-b")


def test_a_node_that_left_is_no_longer_shown_and_an_old_release_is_not_tried() -> None:
    links = Links()
    probe = PeerProbe(links)
    probe.seen([("node-b", node("1")), ("node-old", dict(A))])  # no address: not tried
    assert [n for _, n, _ in links.calls] == ["node-b"]
    links.calls[0][2].errback(PeerUnavailable("10.0.0.6:7777", "Connection refused"))
    assert "node node-b: Connection refused" in probe.state()
    probe.seen([("node-old", dict(A))])  # node-b drained (its record deleted)
    assert probe.state() == "ok"


def test_the_record_names_the_peer_address_and_the_others_are_handed_on() -> None:
    records = {"node-b": json.dumps(node("x"))}
    store = FakeStore("node-a", records)
    watch = NodeSettingsWatch(store, A, Clock(), ttl=60, peer_address="10.0.0.5:7777")
    heard: list[list[tuple[str, dict[str, str]]]] = []
    watch.on_records.append(heard.append)
    watch.start()
    assert json.loads(records["node-a"])[PEER_ADDRESS] == "10.0.0.5:7777"
    assert heard == [[("node-b", node("x"))]]  # itself left out
    assert watch.disagreeing == 0  # the address is one node's own: not compared


def test_a_link_a_request_made_since_clears_a_failure_of_a_moment() -> None:
    links = Links()
    up: set[str] = set()
    probe = PeerProbe(links, up.__contains__)
    probe.seen([("node-b", node("1"))])
    links.calls[0][2].errback(PeerUnavailable("10.0.0.6:7777", "Connection refused"))
    assert "node node-b" in probe.state()
    up.add("10.0.0.6:7777")  # a request through this node made the link since
    assert probe.state() == "ok"


def test_a_killed_node_leaves_ready_once_its_record_expires() -> None:
    """A node killed (no drain, no event): its record expires within a minute, and the
    refresh after that compares while the probe shows a node failing, so the node is
    no longer named."""
    records = {"node-b": json.dumps(node("x"))}
    store = FakeStore("node-a", records)
    clock = Clock()
    watch = NodeSettingsWatch(store, A, clock, ttl=60, peer_address="10.0.0.5:7777")
    links = Links()
    probe = PeerProbe(links)
    watch.on_records.append(probe.seen)
    watch.compare_at_refresh.append(lambda: probe.failing)
    watch.start()
    links.calls[0][2].errback(PeerUnavailable("10.0.0.6:7777", "Connection refused"))
    assert "node node-b" in probe.state()
    del records["node-b"]  # its TTL ran out
    clock.advance(20)  # the next refresh
    assert probe.state() == "ok"


def test_check_config_tries_every_nodes_link_at_once_and_says_them_in_order() -> None:
    # check-config --connect from a host the peer ports are closed to: one node after
    # the other, each unreachable node took its whole connect timeout before the next.
    from studios_gateway.registry.redis_probe import ProbeResult, _try_links

    links = Links()
    records = {name: json.dumps(node("1", f"10.0.0.{i}:7777"))
               for i, name in enumerate(["gw-1", "gw-2", "gw-3", "gw-4"], start=1)}
    result = ProbeResult()
    done = _try_links("gw-1", records, links, result)
    assert [n for _, n, _ in links.calls] == ["gw-2", "gw-3", "gw-4"]  # all asked at once
    links.calls[2][2].callback(object())
    links.calls[0][2].errback(PeerUnavailable("10.0.0.2:7777", SECRET_DIFFERS))
    assert not done.called
    links.calls[1][2].errback(PeerUnavailable("10.0.0.3:7777", "timed out"))
    assert done.called
    assert result.warnings == [f"peer link to node gw-2 at 10.0.0.2:7777: {SECRET_DIFFERS}",
                               "peer link to node gw-3 at 10.0.0.3:7777: timed out"]
    assert result.notes == ["peer link to node gw-4 at 10.0.0.4:7777: accepted"]


def test_a_failure_at_a_nodes_old_address_is_not_shown_once_its_new_one_worked() -> None:
    # node-b killed and started again elsewhere (a new pod, a new address) while the
    # link to its old address, still in its record, waited for its connect timeout
    links = Links()
    probe = PeerProbe(links)
    probe.seen([("node-b", node("1", "10.0.0.6:7777"))])
    probe.seen([("node-b", node("2", "10.0.0.7:7777"))])
    links.calls[1][2].callback(object())
    links.calls[0][2].errback(PeerUnavailable("10.0.0.6:7777", "User timeout caused "
                                              "connection failure."))
    assert probe.state() == "ok"
    assert not probe.failing  # (nor does every refresh read the records for it)
    # and the other way round: the old address's late success hides no new failure
    probe.seen([("node-b", node("3", "10.0.0.8:7777"))])
    probe.seen([("node-b", node("4", "10.0.0.9:7777"))])
    links.calls[3][2].errback(PeerUnavailable("10.0.0.9:7777", SECRET_DIFFERS))
    links.calls[2][2].callback(object())
    assert "node node-b: the peer refused us" in probe.state()
