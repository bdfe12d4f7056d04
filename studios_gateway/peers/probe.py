"""A peer link tried as soon as another node is seen, not at the first relayed request.

A node that cannot make a peer link to another (a CONNECT_PEER_SECRET that differs, a
peer certificate from another CA, an advertised address the others cannot reach) used
to be noticed when a browser's request first needed that link: an error page for the
user, and a line in the log of one node at that moment. Each node now publishes its
peer address in its cluster settings record (registry.node_settings, PEER_ADDRESS);
when this node first sees another node's record, or a new process of it (another
instance), it opens the link it would open for a request (peers.link logs a failure
with the node, its address and what to check) and keeps the outcome for ``/ready``.
Nodes of an earlier release publish no address and are not tried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.node_settings import INSTANCE, PEER_ADDRESS

__all__ = ["PeerProbe"]

#: At most this many failing nodes are named in /ready (then a count).
_NAMED = 3


class PeerProbe:
    """Try `link(address, node_id)` (a Deferred that fires once a link is up) for each
    node seen in the registry with a new process or address; remember the outcome."""

    _log = Logger()

    def __init__(self, link: Callable[[str, str], Any],
                 up: Callable[[str], bool] = lambda address: False):
        self._link = link
        self._up = up  # whether the link to an address is up now (a request made it)
        self._tried: dict[str, tuple[str, str]] = {}  # node -> (instance, address)
        self._failing: dict[str, tuple[str, str]] = {}  # node -> (address, why not)

    def seen(self, nodes: list[tuple[str, dict[str, str]]]) -> None:
        """Every other live node's record, as the settings comparison read them."""
        live = {node for node, _ in nodes}
        for gone in set(self._failing) - live:  # stopped (or its record expired)
            del self._failing[gone]
        for gone in set(self._tried) - live:
            del self._tried[gone]
        for node, record in nodes:
            address = record.get(PEER_ADDRESS, "")
            if not address:
                continue  # an earlier release's node: it says no address
            key = (record.get(INSTANCE, ""), address)
            if self._tried.get(node) == key:
                continue
            self._tried[node] = key
            self._link(address, node).addCallbacks(self._answered, self._answered,
                                                   callbackArgs=(node, key),
                                                   errbackArgs=(node, key))

    @property
    def failing(self) -> bool:
        """Whether a node is shown as failing (then every refresh compares, so that a
        killed node's is dropped once its record expires, within a minute)."""
        return bool(self._failing)

    def _answered(self, outcome: Any, node: str, key: tuple[str, str]) -> None:
        """The link tried for `node`'s process and address `key` was made or refused:
        kept unless the node has been seen since with another (a new process at a new
        address, whose link was made while the old address's timed out: that failure
        stayed in /ready for as long as the new process ran)."""
        if self._tried.get(node) != key:
            return
        if isinstance(outcome, Failure):
            self._failed(outcome, node, key[1])
        else:
            self._worked(outcome, node, key[1])

    def _worked(self, _: Any, node: str, address: str) -> None:
        if self._failing.pop(node, None) is not None:
            self._log.info("peer link to node {node} at {address} works now",
                           node=node, address=address)

    def _failed(self, f: Failure, node: str, address: str) -> None:
        # peers.link has logged why, with the node and its address.
        self._failing[node] = (address,
                               getattr(f.value, "reason", None) or f.getErrorMessage())

    def state(self) -> str:
        """For /ready: 'ok', or which nodes this node cannot make a link to, and why. A
        node whose link a request has made since (the failure was a moment's) is ok."""
        for node, (address, _) in list(self._failing.items()):
            if self._up(address):
                self._worked(None, node, address)
        if not self._failing:
            return "ok"
        named = sorted(self._failing)[:_NAMED]
        more = len(self._failing) - len(named)
        what = "; ".join(f"node {node}: {self._failing[node][1]}" for node in named)
        return (f"no link to {len(self._failing)} other node(s): {what}"
                + (f"; and {more} more (see the log)" if more else "")
                + "; still ready: requests for studios on those nodes fail")
