"""A gateway tunnel table over an in-memory registry holding one session, for unit tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from studios_gateway.registry.base import SessionRecord, hash_token
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.tunnel.server import TunnelSettings, TunnelTable

TOKEN = "t" * 20


def memory_table(clock: Clock, tool: str = "generic", **kw: Any) -> tuple[MemoryStore, TunnelTable]:
    """Session "s1" (connect token TOKEN) in a MemoryStore, and a table on it (node n1)."""
    store = MemoryStore(clock)
    store.create(SessionRecord(id="s1", workspace_id=None, tool=tool, owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    table = TunnelTable(store, node_id="n1", node_address="a:1", clock=clock,
                        settings=TunnelSettings(), **kw)
    return store, table
