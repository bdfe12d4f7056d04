"""Several gateway nodes sharing one Redis (DESIGN part 6); see docs/cluster.md.

``add_peers(gateway)`` (one call in ``service.make_service``) wires:

* the advertised address of this node into the tunnel table, so the registry's
  tunnel holders name an address other nodes can dial;
* with a Redis registry: the peer listener on CONNECT_LISTENER_PORT (refusing
  every peer unless CONNECT_PEER_SECRET and/or CONNECT_PEER_TLS_* are set), and
  ``gateway.dialer.remote``, which carries a stream for a session held by
  another node over one authenticated, multiplexed link to that node.

Cache invalidation needs nothing here: the Redis store publishes every change
on ``<prefix>:events`` and each node's CachingStore drops the entry on hearing it.
"""

from studios_gateway.peers.component import add_peers, advertised_address

__all__ = ["add_peers", "advertised_address"]
