"""Several gateway nodes sharing one Redis (DESIGN part 6); see docs/cluster.md.

``advertised_address(config)`` is the address this node's tunnel holders name
(the service gives it to the tunnel table), so other nodes can dial it.
``build_peers(...)`` (one call in ``service.make_service``) builds, with a Redis
registry, the peer listener on CONNECT_LISTENER_PORT (refusing every peer
unless CONNECT_PEER_SECRET and/or CONNECT_PEER_TLS_* are set) and the remote
dial the service hands to the Dialer: it carries a stream for a session held by
another node over one authenticated, multiplexed link to that node.

Cache invalidation needs nothing here: the Redis store publishes every change
on ``<prefix>:events`` and each node's CachingStore drops the entry on hearing it.
"""

from studios_gateway.peers.component import advertised_address, build_peers

__all__ = ["advertised_address", "build_peers"]
