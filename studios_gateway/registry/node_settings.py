"""Settings every node of a cluster must share, published in Redis and compared.

Login links, OpenID redirect URIs (and the OpenID client registered in
``CONNECT_STORAGE_ROOT``), hand-off redirects and the cookies' domain all come from
each node's own configuration. A node configured differently from the others makes
failures that depend on which node the load balancer picks. Each node keeps
``<prefix>:_node:<node id>`` (JSON of :func:`shared_settings`, TTL NODE_TTL, refreshed)
and publishes ``node:<node id>`` when it starts; every node compares its own settings
with each other node's when it starts and when it hears that event, and logs one
warning per disagreeing node (again only if that node's values change). These values
are public addresses and modes, never secrets. ``check-config --connect`` prints the
same comparison. Nothing refuses to serve: a rolling change passes through a mixed
state.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.base import MAX_NODE_RECORD, StoreUnavailable
from studios_gateway.registry.node_clocks import APART, CLOCK, apart, clocks_apart_line

__all__ = ["INSTANCE", "NODE_TTL", "PEER_ADDRESS", "NodeSettingsWatch", "compare_nodes",
           "disagreement", "node_records", "parse_record", "shared_settings"]

#: How long a node's record lives without a refresh (refreshed every third of it).
NODE_TTL = 60.0

#: The record's field naming the process that wrote it (random, per start): not a setting.
INSTANCE = "instance"

#: The record's field with the address other nodes dial to reach this node's peer
#: listener (CONNECT_ADVERTISE_ADDRESS, or what it comes from): one node's own, not
#: compared; the other nodes try a peer link there when they first see the node.
PEER_ADDRESS = "peer"

#: How much of another node's value a warning shows (repr, so escaped).
_SHOWN_CHARS = 200

#: A node id as CONNECT_NODE_ID accepts it; another name under ``_node:`` is no node's.
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def shared_settings(config: Any) -> dict[str, str]:
    """The settings that must agree on every node, as shown to an operator."""
    issuer = getattr(config, "oidc_issuer_url", None) or config.platform_url
    return {
        "CONNECT_PROXY_URL": config.effective_proxy_url.rstrip("/"),
        "routing": "path" if config.path_routing else "subdomain",
        "CONNECT_STUDIOS_DOMAIN": config.effective_studios_domain,
        "login": f"openid {issuer}" if issuer else "login links",
    }


def parse_record(text: str) -> dict[str, str] | None:
    """A node's stored record, or None when it is not one (another version's, damaged)."""
    if len(text) > MAX_NODE_RECORD:
        return None
    try:
        value = json.loads(text)
        return {str(k): str(v) for k, v in value.items()}
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, too deep
        return None


def _shown(value: str) -> str:
    """`value` for a log line: escaped (repr) and at most _SHOWN_CHARS of it."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    return repr(value)


def node_records(records: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(node id, settings) of each record in `records` ({name: text}, as
    RedisStore.node_records gives) that is a node's, by node id: a name that is no node
    id (which a log line would show) or a record that is not one is left out."""
    out = []
    for other, text in sorted(records.items()):
        theirs = parse_record(text) if _NODE_ID.fullmatch(other) else None
        if theirs is not None:
            out.append((other, theirs))
    return out


def compare_nodes(ours: Mapping[str, str], theirs: Mapping[str, str]
                  ) -> list[tuple[str, str, str]]:
    """(setting, our value, their value) for each setting both name and differ on."""
    return [(name, ours[name], theirs[name]) for name in ours
            if name in theirs and ours[name] != theirs[name]]


def disagreement(node: str, other: str, diffs: list[tuple[str, str, str]]) -> str:
    """The one warning for a pair of nodes that disagree."""
    what = "; ".join(f"{name} is {_shown(ours)} here but {_shown(theirs)} on {other}"
                     for name, ours, theirs in diffs)
    return (f"cluster settings differ between node {node} and node {other}: {what}. "
            "Every node behind the load balancer must have the same values (else logins, "
            "redirects and cookies fail depending on which node answers); expected for "
            "a moment during a rolling change of them, not after it")


class NodeSettingsWatch:
    """Publish this node's shared settings in `store` (a RedisStore) and warn about nodes
    whose settings differ."""

    _log = Logger()

    def __init__(self, store: Any, settings: Mapping[str, str], clock: IReactorTime,
                 ttl: float = NODE_TTL, peer_address: str = ""):
        self.store = store
        self.node_id: str = store.node_id
        self.settings = dict(settings)
        self.ttl = ttl
        self.clock = clock
        # Which process wrote the record: a record of this node id written by another
        # between two of ours is a second process with this node id (not compared).
        self.instance = secrets.token_hex(8)
        self.peer_address = peer_address
        self._own = {**self.settings, INSTANCE: self.instance,
                     **({PEER_ADDRESS: peer_address} if peer_address else {})}
        self._clocks_said: set[tuple[str, str]] = set()  # (node, instance) said apart
        #: Called with every other node's (node id, record) at each comparison.
        self.on_records: list[Callable[[list[tuple[str, dict[str, str]]]], None]] = []
        #: Whether a refresh compares too (else only a start, another node's start or
        #: lost events do): for a hook that must see a node's record go (it expired).
        self.compare_at_refresh: list[Callable[[], bool]] = []
        self._written = False  # a first announcement replaced whatever was there
        self._twins: set[str] = set()  # other processes seen with this node id (warned)
        self._warned: dict[str, tuple[tuple[str, str, str], ...]] = {}
        self._refresh = task.LoopingCall(self._announce, False)
        self._refresh.clock = clock
        self._unsubscribe = store.subscribe_nodes(self._heard)
        self._stopped = False
        self._failing = False  # the last announcement failed (logged once)
        self._tell_next = False  # the next refresh publishes too (events were lost)

    @property
    def disagreeing(self) -> int:
        """How many other live nodes' settings differ from this node's (as last seen)."""
        return len(self._warned)

    def start(self) -> None:
        """Once connected: announce (telling every node), compare with every node, then
        refresh the record every third of its TTL."""
        def connected(_: Any) -> None:
            if self._stopped:
                return
            self._announce(True)
            if not self._refresh.running:
                self._refresh.start(self.ttl / 3, now=False)

        self.store.when_connected().addCallbacks(connected, lambda _: None)

    def stop(self) -> Deferred[None]:
        """Stop refreshing and delete this node's record (a node that drains is no longer
        one the others must agree with; they hear it and compare again at once). Without
        Redis the record stays until its TTL runs out (said once)."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        self._unsubscribe()
        if self._refresh.running:
            self._refresh.stop()

        def failed(f: Failure) -> None:
            self._log.info("cannot delete this node's cluster settings record now: {why} "
                           "(it expires within {ttl:g}s)", why=f.getErrorMessage(),
                           ttl=self.ttl)

        return self.store.withdraw_node().addErrback(failed)

    def _announce(self, tell: bool) -> Deferred[None]:
        """Write the record (with `tell`: publish and compare too). A failure is logged
        once until an announcement works again (not every refresh of every node while
        Redis is away); the first that works after one tells every node and compares,
        as Redis may have lost every record meanwhile (so does the first after lost
        events)."""
        if self._stopped:
            return succeed(None)
        if self._failing or self._tell_next:
            # Redis may be back from a restart, with an older record of this node id (a
            # previous process's, from its snapshot): not taken for another live process.
            self._written = False
        tell = tell or self._failing or self._tell_next
        if tell:
            self._tell_next = False
        # With the time (node_clocks): a node that hears `tell` compares its clock.
        record = json.dumps({**self._own, CLOCK: f"{self.clock.seconds():.3f}"},
                            sort_keys=True)
        d = self.store.announce_node(record, self.ttl, tell=tell)
        d.addCallback(self._check_replaced)
        if tell or any(wants() for wants in self.compare_at_refresh):
            d.addCallback(lambda _: self.compare())

        def worked(_: Any) -> None:
            if self._failing:
                self._failing = False
                self._log.info("this node's cluster settings are published again")

        def failed(f: Failure) -> None:
            if not self._failing:
                self._failing = True
                self._log.info("cannot publish this node's cluster settings now: {why} "
                               "(tried again every {every:g}s; logged when it works)",
                               why=f.getErrorMessage(), every=self.ttl / 3)

        return d.addCallbacks(worked, failed)

    def _check_replaced(self, replaced: str | None) -> None:
        """`replaced`: the record our announcement overwrote. After our first (which may
        replace the record of this node's previous, dead process), one written by another
        process means two live processes share this node id: they overwrite each other's
        claims' routes and records, and requests through one for studios held by the
        other fail as "not connected". Warned once per other process."""
        first, self._written = not self._written, True
        if not first:
            self._twin(parse_record(replaced) if replaced is not None else None)

    def _twin(self, theirs: dict[str, str] | None) -> bool:
        """Warn when `theirs` (a record of this node id) is another process's, once per
        process; whether it was newly seen."""
        other = theirs.get(INSTANCE) if theirs is not None else None
        if theirs is None or not other or other == self.instance or other in self._twins:
            return False
        self._twins.add(other)
        where = theirs.get(PEER_ADDRESS)
        self._log.warn("another gateway process announces itself as node {node} too{where}: "
                       "every node needs its own CONNECT_NODE_ID (unset, it is the host name "
                       "and tunnel port, the same in containers that share a host name). "
                       "With one id, requests through one process for studios bound to the "
                       "other fail as \"Studio not connected\" when both also advertise the "
                       "same peer address (CONNECT_ADVERTISE_ADDRESS; unset, the host name), "
                       "a drain of one does not count the other as a node its studios can "
                       "move to, and their cluster settings records overwrite each other",
                       node=self.node_id,
                       where=f" (its peer address {where}, this one's {self.peer_address})"
                       if where and self.peer_address else "")
        return True

    def _heard(self, node_id: str | None) -> None:
        if self._stopped:
            return
        if node_id == self.node_id:
            # Our own announcement or withdrawal, or another process's start with this
            # node id: read the record, so that a second process is said now rather than
            # at the next refresh (up to a third of the TTL later).
            self.store.node_records().addCallbacks(self._own_record, lambda _: None)
            return
        if node_id is None:
            # Events were lost (the subscriber (re)connected): Redis may have restarted
            # and lost every record; the next refresh writes ours and tells every node.
            self._tell_next = True
        # A new node (or lost events): compare again; known pairs are not repeated.
        self.compare(fresh=node_id).addErrback(self._not_compared, node_id)

    def _own_record(self, records: Mapping[str, str]) -> None:
        """After hearing this node id announced or withdrawn: another process's record
        under it is a twin; said, and announced over with a tell, so that the other
        process reads ours and says it too (each process does so once per other
        process). No record: another process of this id that drained (an earlier one,
        a twin) deleted ours; written again now, not at the next refresh (the others
        heard the deletion: no tell)."""
        text = records.get(self.node_id)
        if self._stopped or not self._written:
            return
        if text is None:
            self._announce(False)
            return
        if self._twin(parse_record(text)):
            self._announce(True)

    def _not_compared(self, f: Failure, node_id: str | None) -> None:
        if node_id is None and f.check(StoreUnavailable):
            # Lost events are said when the subscriber connection goes, and when it is
            # back, often before the command connection (at every start): Redis's own
            # lines say it is away; the store tells again once commands work, and the
            # next refresh compares too. ("cannot compare ... not connected yet" at
            # starts with Redis there.)
            return
        self._log.info("cannot compare the cluster's settings now: {why}",
                       why=f.getErrorMessage())

    def compare(self, fresh: str | None = None) -> Deferred[None]:
        """Compare with every node's record; `fresh`: the node whose announcement was just
        heard (its record written moments ago: its clock is compared too)."""
        return self.store.node_records().addCallback(self._compare, fresh)

    def _compare_clock(self, node: str, record: dict[str, str]) -> None:
        behind = apart(self.clock.seconds(), record)
        said = (node, record.get(INSTANCE, ""))
        if behind is None or abs(behind) < APART or said in self._clocks_said:
            return
        self._clocks_said.add(said)
        self._log.warn("{line}", line=clocks_apart_line(self.node_id, node, behind))

    def _compare(self, records: Mapping[str, str], fresh: str | None = None) -> None:
        seen: dict[str, tuple[tuple[str, str, str], ...]] = {}
        others = [(node, theirs) for node, theirs in node_records(records)
                  if node != self.node_id]
        for node, theirs in others:
            if node == fresh:
                self._compare_clock(node, theirs)
        for hook in self.on_records:
            hook(others)
        for other, theirs in others:
            diffs = tuple(compare_nodes(self.settings, theirs))
            if not diffs:
                continue
            seen[other] = diffs
            if self._warned.get(other) != diffs:
                self._log.warn("{message}", message=disagreement(self.node_id, other,
                                                                 list(diffs)))
        for other in sorted(set(self._warned) - set(seen)):
            self._log.info("cluster settings: node {other} no longer differs (it stopped, "
                           "now has the same values, or its record is gone)", other=other)
        self._warned = seen
