"""A real redis-server: the gateway tells whether it persists (issue 17, item 3)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from studios_gateway.registry.redis_persistence import check_persistence
from tests.integration.test_registry_redis import RedisCase, new_store
from tests.support.redis_server import redis_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server not installed")]


class RedisPersistenceTests(RedisCase):
    @defer.inlineCallbacks
    def test_a_redis_without_aof_or_rdb_is_found_out(self) -> Any:
        store = yield self.started(new_store(self.server))
        # The test server starts with --save '' --appendonly no.
        persists, how = yield check_persistence(store)
        assert persists is False and how == "neither AOF nor RDB snapshots"
        self.server.cli("CONFIG", "SET", "save", "900 1")
        self.addCleanup(self.server.cli, "CONFIG", "SET", "save", "")
        persists, how = yield check_persistence(store)
        assert persists is True and how == "RDB snapshots (save 900 1)"
        self.server.cli("CONFIG", "SET", "appendonly", "yes")
        self.addCleanup(self.server.cli, "CONFIG", "SET", "appendonly", "no")
        persists, how = yield check_persistence(store)
        assert persists is True and how.startswith("AOF and RDB")
