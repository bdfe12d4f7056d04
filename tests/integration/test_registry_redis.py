"""RedisStore against a real redis-server: the shared store contract, ACL, db, prefix,
invalidation between nodes, racing claims, an outage and recovery, TLS."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.registry import redis_link
from studios_gateway.registry.base import SEEN_TTL, Refresh, StoreUnavailable, TunnelHolder
from studios_gateway.registry.cache import CachingStore
from studios_gateway.registry.redis import RedisStore
from studios_gateway.ssh.keys import key_file_path
from studios_gateway.ssh.user_keys import FileImport
from tests.support.redis_server import (
    RedisServer,
    make_tls_files,
    redis_available,
    redis_tls_support,
)
from tests.unit.test_registry_memory import Recorder, StoreContract, holder, record
from tests.unit.test_registry_user_keys import UserKeysContract, real_key
from tests.unit.test_registry_user_keys import line as key_line

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server not installed")]

_prefixes = itertools.count()
TIMEOUT = 10  # trial's per-test timeout, seconds; every wait below is on an event


def temp_dir(case: unittest.TestCase) -> Path:
    """A fresh directory outside the repository, removed after the test."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="redis-test-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def new_store(server: RedisServer, **kw: Any) -> RedisStore:
    kw.setdefault("prefix", f"t{next(_prefixes)}:connect:session")
    kw.setdefault("reconnect_delay", (0.05, 0.3))
    if server.user is not None:
        kw.setdefault("user", server.user)
        kw.setdefault("password", server.password)
    return RedisStore(address=server.address, clock=reactor, **kw)


@defer.inlineCallbacks
def fail_fast(*calls: Any) -> Any:
    """Each call fails with StoreUnavailable within 0.5 s (Redis is dead)."""
    for call in calls:
        start = time.monotonic()
        try:
            yield call()
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("a call succeeded with Redis dead")
        assert time.monotonic() - start < 0.5, "did not fail fast"


class RedisCase(unittest.TestCase):
    timeout = TIMEOUT
    server: RedisServer
    server_options: dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls._tmp = tempfile.TemporaryDirectory(prefix="redis-test-")
        cls.server = RedisServer(Path(cls._tmp.name), **cls.server_options)
        cls.server.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls._tmp.cleanup()

    @defer.inlineCallbacks
    def started(self, store: RedisStore) -> Any:
        store.start()
        self.addCleanup(store.stop)
        yield store.when_connected()
        return store

    @defer.inlineCallbacks
    def two_nodes(self) -> Any:
        """`self.store` and `self.other`: nodes a and b on one fresh prefix, connected."""
        prefix = f"t{next(_prefixes)}:connect:session"
        self.store = yield self.started(new_store(self.server, prefix=prefix, node_id="node-a"))
        self.other = yield self.started(new_store(self.server, prefix=prefix, node_id="node-b"))


class RedisContractTests(StoreContract, RedisCase):
    """The same semantics as MemoryStore, on two nodes sharing one Redis."""

    def setUp(self) -> Any:
        return self.two_nodes()

    @defer.inlineCallbacks
    def check_expiry(self, h: TunnelHolder, ttl: float) -> Any:
        key = f"{self.store.prefix}:{h.session_id}:tunnel"
        pttl = int((yield self.store.command("PTTL", key)))
        assert 0 < pttl <= ttl * 1000
        assert (yield self.store.refresh_tunnel(h, 60)) is True
        assert int((yield self.store.command("PTTL", key))) > ttl * 1000
        # Let the TTL run out now (a deadline in the past expires the key at once).
        yield self.store.command("PEXPIREAT", key, 1)
        assert (yield self.store.get_tunnel(h.session_id)) is None
        assert (yield self.store.release_tunnel(h)) is False
        assert (yield self.store.claim_tunnel(h, ttl)) is None

    def expire(self, h: TunnelHolder, ttl: float) -> Any:
        key = f"{self.store.prefix}:{h.session_id}:tunnel"
        return self.store.command("PEXPIREAT", key, 1)  # a deadline in the past: gone now

    def lose_record(self, session_id: str) -> Any:
        return self.store.command("DEL", f"{self.store.prefix}:{session_id}")  # no event

    @defer.inlineCallbacks
    def test_last_connected_is_kept_bounded_and_read_with_care(self) -> Any:
        key = f"{self.store.prefix}:abc123:seen"
        yield self.store.create(record())
        for write in (lambda: None, lambda: self.store.claim_tunnel(holder(), 30),
                      lambda: self.store.release_tunnel(holder())):
            yield write()
            pttl = int((yield self.store.command("PTTL", key)))
            assert 0 < pttl <= SEEN_TTL * 1000  # renewed at each write, never forever
        assert len((yield self.store.command("GET", key))) < 64
        # Damaged, hostile or longer than any node writes: unknown (the caller falls back).
        for bad in ("not json", '{"b": "noon"}', "[1]", '{"b": 1, "x": "%s"}' % ("y" * 300)):
            yield self.store.command("SET", key, bad)
            assert (yield self.other.last_connected("abc123")) is None
        # A session an older node made (no last-connected record): unknown, not "never".
        yield self.store.command("SET", f"{self.store.prefix}:old1", record("old1").to_json())
        assert (yield self.other.get("old1")) == record("old1")
        assert (yield self.other.last_connected("old1")) is None
        # Not a session id: no read at all.
        assert (yield self.store.last_connected("x:y*")) is None

    @defer.inlineCallbacks
    def test_nodes_are_found_without_walking_every_session(self) -> Any:
        """node_records SCANned the whole keyspace (10,000 sessions: 11 SCANs, about 4 ms
        of Redis's time) at each comparison, and every node compares whenever one starts;
        now one GET of the nodes' index and one MGET. A node whose record expired leaves
        the index at the next announcement."""
        p = self.store.prefix
        args: list[Any] = []
        for i in range(5000):
            args += [f"{p}:s{i:05d}", "x" * 100]
        yield self.store.command("MSET", *args)
        yield self.store.announce_node('{"a": "1"}', 60, tell=False)
        yield self.other.announce_node('{"a": "2"}', 60, tell=False)
        yield self.store.command("CONFIG", "RESETSTAT")
        assert (yield self.store.node_records()) == {"node-a": '{"a": "1"}',
                                                     "node-b": '{"a": "2"}'}
        stats = yield self.store.command("INFO", "commandstats")
        assert "cmdstat_scan:" not in redis_link.reply_text(stats)
        yield self.store.command("PEXPIREAT", f"{p}:_node:node-b", 1)  # node-b went away
        assert (yield self.store.node_records()) == {"node-a": '{"a": "1"}'}
        yield self.store.announce_node('{"a": "1"}', 60, tell=False)
        assert json.loads((yield self.store.command("GET", f"{p}:_nodes"))) == ["node-a"]
        yield self.other.announce_node('{"a": "2"}', 60, tell=False)  # back
        assert set((yield self.store.node_records())) == {"node-a", "node-b"}
        # A damaged index is rebuilt by the next announcement, never an error.
        for damaged in ("[" * 5000, json.dumps(["node-b"] * 100_000)):  # deep, too long
            yield self.store.command("SET", f"{p}:_nodes", damaged)
            assert (yield self.store.node_records()) == {}
            yield self.store.announce_node('{"a": "1"}', 60, tell=False)
            assert (yield self.store.node_records()) == {"node-a": '{"a": "1"}'}

    @defer.inlineCallbacks
    def test_long_node_records_and_index_are_never_sent(self) -> Any:
        """node_records MGET every record, and GET the index, before checking their size:
        anyone who can write the Redis made every node read (and hold) megabytes at each
        comparison. Now Redis sends none longer than the limits (measured by its own count
        of bytes sent); such a record is left out, the others are found."""
        p = self.store.prefix
        yield self.store.announce_node('{"a": "1"}', 60, tell=False)
        yield self.other.announce_node('{"a": "2"}', 60, tell=False)
        yield self.store.command("SET", f"{p}:_node:node-b", "x" * (4 << 20))

        @defer.inlineCallbacks
        def sent_by_redis(call: Any) -> Any:
            before = yield self.store.command("INFO", "stats")
            result = yield call()
            after = yield self.store.command("INFO", "stats")

            def out(info: Any) -> int:
                line = next(x for x in redis_link.reply_text(info).splitlines()
                            if x.startswith("total_net_output_bytes:"))
                return int(line.split(":")[1])

            return result, out(after) - out(before)

        records, sent = yield sent_by_redis(self.store.node_records)
        assert records == {"node-a": '{"a": "1"}'}
        assert sent < 100_000, sent  # (the INFO reply itself is counted too)
        # Too long a record stays in the index (it exists), it is just not read.
        assert self.store._nodes_gone == []
        yield self.store.command("SET", f"{p}:_nodes", json.dumps(["node-a"] * 400_000))
        records, sent = yield sent_by_redis(self.store.node_records)
        assert records == {} and sent < 100_000, sent
        yield self.store.announce_node('{"a": "1"}', 60, tell=False)  # rebuilds the index
        assert (yield self.store.node_records()) == {"node-a": '{"a": "1"}'}

    @defer.inlineCallbacks
    def test_a_node_that_stops_withdraws_its_record_and_says_so(self) -> Any:
        """A stopped node's record stayed for its whole TTL (60 s), counted by every other
        node as a live one that differs; withdraw_node deletes it and tells every node."""
        heard = Recorder()
        self.store.subscribe_nodes(heard)
        # An announcement says which record it replaced (a second process with this id?).
        assert (yield self.store.announce_node('{"a": "0"}', 60, tell=False)) is None
        assert (yield self.store.announce_node('{"a": "1"}', 60, tell=True)) == '{"a": "0"}'
        assert (yield self.other.announce_node('{"a": "2"}', 60, tell=False)) is None
        p = self.store.prefix
        yield self.other.command("SET", f"{p}:_node:node-b", "x" * 5000)  # too long: unsent
        assert (yield self.other.announce_node('{"a": "2"}', 60, tell=False)) is None
        assert set((yield self.store.node_records())) == {"node-a", "node-b"}
        yield self.other.withdraw_node()
        yield heard.wait_for("node-b")
        assert (yield self.store.node_records()) == {"node-a": '{"a": "1"}'}

    @defer.inlineCallbacks
    def test_an_announcement_publishes_in_its_own_script(self) -> Any:
        """announce_node(tell=True) sent its PUBLISH as a second command once the script
        had written the record (two round trips; the event lost if the link dropped
        between them), where withdraw_node publishes inside its script. Now one command
        each way, and the other nodes still hear ``node:<id>`` (and nothing without
        `tell`)."""
        heard = Recorder()
        self.other.subscribe_nodes(heard)
        sent: list[str] = []
        real = self.store._call

        def counted(what: str, command: Any) -> Any:
            sent.append(what)
            return real(what, command)

        self.patch(self.store, "_call", counted)
        yield self.store.announce_node('{"a": "0"}', 60, tell=False)
        assert sent == ["announce_node"]
        assert (yield self.store.announce_node('{"a": "1"}', 60, tell=True)) == '{"a": "0"}'
        assert sent == ["announce_node"] * 2
        yield heard.wait_for("node-a")
        # (the channel keeps order: nothing came before; nor the "events lost" notice a
        # store gives again once its command link is up, which when_connected now waits
        # for: it came after, ci51f, once in two test runners)
        assert heard.seen == ["node-a"]
        assert (yield self.other.node_records()) == {"node-a": '{"a": "1"}'}

    @defer.inlineCallbacks
    def test_key_layout(self) -> Any:
        yield self.store.create(record())
        yield self.store.claim_tunnel(holder(), 30)
        p = self.store.prefix
        assert (yield self.store.command("TYPE", f"{p}:abc123")) == "string"
        assert (yield self.store.command("EXISTS", f"{p}:abc123:tunnel")) == 1
        # A tunnel key is not listed as a session.
        assert [r.id for r in (yield self.store.list_sessions())] == ["abc123"]

    @defer.inlineCallbacks
    def test_racing_claims_leave_one_holder(self) -> Any:
        yield self.store.create(record())
        a = holder(node="node-a", tunnel="ta")
        b = holder(node="node-b", tunnel="tb")
        results = yield defer.gatherResults([self.store.claim_tunnel(a, 30),
                                             self.other.claim_tunnel(b, 30)])
        final = yield self.store.get_tunnel("abc123")
        assert final in (a, b)
        loser = b if final == a else a
        # Exactly one claim saw no previous holder; the other replaced the first.
        assert sorted(results, key=lambda r: r is None) == [loser, None]
        loser_store = self.store if loser is a else self.other
        winner_store = self.other if loser is a else self.store
        assert (yield loser_store.release_tunnel(loser)) is False
        assert (yield loser_store.refresh_tunnel(loser, 30)) is False
        assert (yield self.store.get_tunnel("abc123")) == final
        assert (yield winner_store.release_tunnel(final)) is True

    def test_repr_has_no_password(self) -> None:
        store = RedisStore(address="redis:6379", user="gw", password="hunter2-secret")
        assert "hunter2" not in repr(store)
        assert "gw" in repr(store)


class RedisPendingLoginTests(RedisCase):
    """OpenID logins between their start and their callback: kept by one node, taken
    exactly once by whichever node gets the callback."""

    def setUp(self) -> Any:
        return self.two_nodes()

    @defer.inlineCallbacks
    def test_kept_on_one_node_taken_once_on_any(self) -> Any:
        value = '{"nonce": "n", "next_url": "/caf\u00e9"}'
        yield self.store.keep_pending_login("state-a", value, 600)
        key = f"{self.store.prefix}:_pending:state-a"
        assert 0 < int((yield self.store.command("PTTL", key))) <= 600_000
        assert (yield self.other.take_pending_login("state-a")) == value
        assert (yield self.store.take_pending_login("state-a")) is None
        assert (yield self.other.take_pending_login("state-a")) is None
        assert (yield self.store.command("EXISTS", key)) == 0

    @defer.inlineCallbacks
    def test_racing_takes_give_it_to_one(self) -> Any:
        yield self.store.keep_pending_login("state-r", "{}", 60)
        answers = yield defer.gatherResults(
            [node.take_pending_login("state-r") for node in (self.store, self.other) * 5])
        assert sorted(answers, key=lambda a: a is None) == ["{}"] + [None] * 9

    @defer.inlineCallbacks
    def test_expired_unknown_and_malformed_states_are_none(self) -> Any:
        yield self.store.keep_pending_login("state-e", "{}", 60)
        yield self.store.command("PEXPIREAT", f"{self.store.prefix}:_pending:state-e", 1)
        assert (yield self.other.take_pending_login("state-e")) is None
        assert (yield self.other.take_pending_login("never-kept")) is None
        for bad in ("", "a:b", "x" * 129, "*", None):
            assert (yield self.other.take_pending_login(bad)) is None  # type: ignore[arg-type]

    @defer.inlineCallbacks
    def test_bounded_values_and_bad_calls_are_refused_writing_nothing(self) -> Any:
        from studios_gateway.registry.base import MAX_PENDING_LOGIN_BYTES

        yield self.store.keep_pending_login("state-big", "x" * MAX_PENDING_LOGIN_BYTES, 60)
        for state, value, ttl in (("state-big2", "x" * (MAX_PENDING_LOGIN_BYTES + 1), 60),
                                  ("state-big3", "\u00e9" * (MAX_PENDING_LOGIN_BYTES // 2 + 1),
                                   60),
                                  ("a:b", "{}", 60), ("state-t", "{}", 0)):
            with pytest.raises(ValueError) as refused:
                yield self.store.keep_pending_login(state, value, ttl)
            assert "xxxx" not in str(refused.value)  # the value is never shown
        found = yield self.store.command("KEYS", f"{self.store.prefix}:_pending:*")
        assert found == [f"{self.store.prefix}:_pending:state-big"]

    @defer.inlineCallbacks
    def test_a_state_kept_twice_keeps_the_first(self) -> Any:
        yield self.store.keep_pending_login("state-d", "first", 60)
        with pytest.raises(ValueError, match="kept already"):
            yield self.other.keep_pending_login("state-d", "second", 60)
        assert (yield self.other.take_pending_login("state-d")) == "first"


class RedisPrefixAndDbTests(RedisCase):
    @defer.inlineCallbacks
    def test_db_selection(self) -> Any:
        db0 = yield self.started(new_store(self.server, prefix="same", db=0))
        db3 = yield self.started(new_store(self.server, prefix="same", db=3))
        yield db3.create(record())
        assert (yield db0.get("abc123")) is None
        assert (yield db3.get("abc123")) == record()
        assert (yield db3.command("DBSIZE")) == 2  # the record and its last-connected
        assert (yield db0.command("DBSIZE")) == 0
        yield db3.delete("abc123")

    @defer.inlineCallbacks
    def test_the_look_for_other_clusters_is_cut_on_a_big_keyspace(self) -> Any:
        """A start looks at a bounded part of a Redis shared with many other keys (the
        whole keyspace cost seconds of Redis time at 2 million keys), and says so."""
        from studios_gateway.registry import redis

        store = yield self.started(new_store(self.server, prefix="mine", db=6))
        self.addCleanup(store.command, "FLUSHDB")
        yield store.command("SET", "studois:_nodes", "x")
        for start in range(0, 3000, 500):
            yield store.command("MSET", *[part for i in range(start, start + 500)
                                          for part in (f"other:{i}", "v")])
        assert (yield store.cluster_prefixes()) == (["studois"], True)
        self.patch(redis, "PREFIX_SCAN_CALLS", 1)
        prefixes, whole = yield store.cluster_prefixes()
        assert whole is False
        assert prefixes in ([], ["studois"])

    @defer.inlineCallbacks
    def test_prefixes_are_separate(self) -> Any:
        a = yield self.started(new_store(self.server, prefix="team[a]*:sessions"))
        b = yield self.started(new_store(self.server, prefix="team[a]x:sessions"))
        yield a.create(record("one"))
        yield b.create(record("two"))
        assert [r.id for r in (yield a.list_sessions())] == ["one"]
        assert [r.id for r in (yield b.list_sessions())] == ["two"]
        assert (yield a.get("two")) is None
        assert (yield a.command("EXISTS", "team[a]*:sessions:one")) == 1

    @defer.inlineCallbacks
    def test_list_many(self) -> Any:
        store = yield self.started(new_store(self.server))
        seen = Recorder()
        store.subscribe(seen)
        yield defer.gatherResults([store.create(record(f"s{i}")) for i in range(1200)])
        assert len((yield store.list_sessions())) == 1200
        yield seen.wait_for("s1199")  # let the flood of invalidations drain before stopping


class RedisDeadlineTests(RedisCase):
    """A command's deadline (RedisStore.timeout) means Redis has been silent that long
    (deadline.within's ``heard``), not that this process was slow to read its answer."""

    @defer.inlineCallbacks
    def test_an_answer_behind_a_long_pipeline_is_waited_for_while_redis_sends(self) -> Any:
        writer = yield self.started(new_store(self.server))
        key = f"{writer.prefix}:big"
        yield writer.command("SET", key, "x" * (1 << 20))
        # (longest_wait: however slow this machine reads it all, Redis is sending)
        store = yield self.started(new_store(self.server, timeout=0.5, longest_wait=120))
        # A busy process: 5 ms of other work after each read of the link (a reconnect
        # storm's handshakes), so 20 MiB of answers (320 reads or more, each read kept
        # at 64 KiB here) take over 1.6 s whatever this machine's speed, with Redis
        # sending all along.
        self.patch(redis_link, "READ_MAX", redis_link.READ_MIN)
        conn = store._commands.conn
        read = conn.dataReceived

        def busy_read(data: bytes, *more: Any) -> None:
            read(data, *more)
            time.sleep(0.005)

        conn.dataReceived = busy_read
        start = time.monotonic()
        sizes = yield defer.gatherResults(
            [store.command("GET", key).addCallback(len) for _ in range(20)],
            consumeErrors=True)
        took = time.monotonic() - start
        assert took > 2 * store.timeout, f"the pipeline took only {took:.2f}s: it shows nothing"
        assert sizes == [1 << 20] * 20  # before `heard`, the later ones: "did not answer"

    @defer.inlineCallbacks
    def test_a_backlog_of_answers_is_read_in_few_large_reads(self) -> Any:
        """A busy process reads what Redis has sent in reads of up to 1 MiB, not 64 KiB:
        in a reconnect storm each read waits a long reactor turn."""
        writer = yield self.started(new_store(self.server))
        key = f"{writer.prefix}:big"
        yield writer.command("SET", key, "x" * (1 << 20))
        store = yield self.started(new_store(self.server, longest_wait=120))
        conn = store._commands.conn
        read = conn.dataReceived
        reads: list[int] = []

        def busy_read(data: bytes, *more: Any) -> None:
            if not more:
                reads.append(len(data))
            read(data, *more)
            time.sleep(0.005)

        conn.dataReceived = busy_read
        sizes = yield defer.gatherResults(
            [store.command("GET", key).addCallback(len) for _ in range(20)],
            consumeErrors=True)
        assert sizes == [1 << 20] * 20
        # 20 MiB in 64 KiB reads would be 320 or more.
        assert len(reads) < 100 and max(reads) > 512 * 1024, (len(reads), max(reads))
        small = yield store.command("GET", f"{store.prefix}:nothing")
        assert small is None and conn.transport.bufferSize == redis_link.READ_MIN

    @defer.inlineCallbacks
    def test_a_silent_redis_fails_a_command_after_the_timeout(self) -> Any:
        store = yield self.started(new_store(self.server, timeout=0.3))
        assert self.server.proc is not None
        yield store.ping()
        os.kill(self.server.proc.pid, signal.SIGSTOP)  # up, connected, and answering nothing
        try:
            start = time.monotonic()
            try:
                yield store.command("GET", f"{store.prefix}:nothing")
            except StoreUnavailable as e:
                assert "did not answer GET within 0.3s" in str(e), str(e)
            else:
                raise AssertionError("a command succeeded with Redis stopped")
            assert time.monotonic() - start < 1.0  # the timeout, not the longest wait (1.5 s)
        finally:
            os.kill(self.server.proc.pid, signal.SIGCONT)
        yield store.ping()


class RedisACLTests(RedisCase):
    server_options = {"user": "gateway", "password": "correct-horse-battery"}

    @defer.inlineCallbacks
    def test_acl_user_and_invalidation(self) -> Any:
        prefix = "acl:connect:session"
        a = yield self.started(new_store(self.server, prefix=prefix, node_id="a"))
        b = yield self.started(new_store(self.server, prefix=prefix, node_id="b"))
        seen = Recorder()
        b.subscribe(seen)
        yield a.create(record())
        yield seen.wait_for("abc123")
        assert (yield b.get("abc123")) == record()

    @defer.inlineCallbacks
    def test_wrong_password_is_unavailable_and_not_logged(self) -> Any:
        store = new_store(self.server, password="wrong-password-xyz")
        failed = store.next_connection_failure()
        store.start()
        self.addCleanup(store.stop)
        reason = yield failed
        assert "WRONGPASS" in reason or "auth" in reason.lower()
        assert "wrong-password-xyz" not in reason
        try:
            yield store.ping()
        except StoreUnavailable as e:
            assert "wrong-password-xyz" not in str(e)
        else:
            raise AssertionError("ping succeeded with a wrong password")
        assert "wrong-password-xyz" not in repr(store)
        # It keeps trying (txredisapi alone would give up after a failed AUTH).
        again = yield store.next_connection_failure()
        assert again

    @defer.inlineCallbacks
    def test_a_wrong_password_is_one_warning_not_one_per_retry(self) -> Any:
        # Each retry (0.5 s to 5 s apart, for ever) logged the same refusal again: the
        # gateway's own line, txredisapi's "Redis error: could not auth: ..." (a legacy
        # log.msg) and Twisted's "Scheduling retry ..." (through the same filters as the
        # process's log file).
        from twisted.logger import FilteringLogObserver, formatEvent, globalLogPublisher

        from studios_gateway.logs import PREDICATES

        said: list[str] = []
        lines: list[str] = []

        def watch(event: dict) -> None:
            if event.get("log_namespace", "").endswith("redis._Link") and \
                    event.get("log_level") is not None and event["log_level"].name == "warn":
                said.append(str(event.get("why") or event.get("error")))
            lines.append(formatEvent(event) or "")

        observer = FilteringLogObserver(watch, PREDICATES)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        store = new_store(self.server, password="another-wrong-password")
        failures = [store.next_connection_failure()]
        subscriber = store.next_subscriber_failure()
        store.start()
        self.addCleanup(store.stop)
        yield subscriber
        for _ in range(3):
            yield failures[-1]
            failures.append(store.next_connection_failure())
        yield failures[-1]
        # Both links (commands, subscriber) said it once each, over four refusals.
        assert len(said) == 2 and all("WRONGPASS" in w for w in said), said
        assert not any("another-wrong-password" in w for w in said)
        assert len([line for line in lines if "WRONGPASS" in line]) == 2, lines
        assert not [line for line in lines if "Scheduling retry" in line], lines

    @defer.inlineCallbacks
    def test_no_credentials_refused(self) -> Any:
        store = RedisStore(address=self.server.address, clock=reactor,
                           reconnect_delay=(0.05, 0.3))
        failed = store.next_connection_failure()
        store.start()
        self.addCleanup(store.stop)
        reason = yield failed
        assert "NOAUTH" in reason or "NOPERM" in reason or "auth" in reason.lower() or reason


def documented_acl_rules() -> str:
    """The rights docs/cluster.md gives the gateway's ACL user (after its password)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
    for line in doc.read_text().splitlines():
        if line.startswith("user gateway on >PASSWORD "):
            return line.removeprefix("user gateway on >PASSWORD ")
    raise AssertionError("docs/cluster.md gives no ACL line for the gateway's user")


class RedisLeastPrivilegeTests(RedisCase):
    """Every store call works as a user with exactly the rights docs/cluster.md lists."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server_options = {"user": "gateway", "password": "least-privilege-pw",
                              "acl_rules": documented_acl_rules()}
        super().setUpClass()

    @defer.inlineCallbacks
    def test_every_call_with_the_documented_rights(self) -> Any:
        a = yield self.started(new_store(self.server, prefix="connect:session", db=1,
                                         node_id="a"))
        b = yield self.started(new_store(self.server, prefix="connect:session", db=1,
                                         node_id="b"))
        seen, keys_seen = Recorder(), Recorder()
        b.subscribe(seen)
        b.subscribe_user_keys(keys_seen)
        yield a.create(record())
        yield seen.wait_for("abc123")
        assert (yield b.get("abc123")) == record()
        assert [r.id for r in (yield b.list_sessions())] == ["abc123"]
        yield a.update(record())
        h = holder()
        assert (yield a.claim_tunnel(h, 30)) is None
        assert (yield a.refresh_tunnel(h, 30)) is True
        assert (yield a.refresh_tunnels([h], 30)) == [Refresh.OURS]
        assert (yield b.get_tunnel("abc123")) == h
        assert (yield a.release_tunnel(h)) is True
        assert (yield b.last_connected("abc123")).bound_at == h.bound_at
        yield a.set_user_keys("bob", [key_line(1)])
        yield keys_seen.wait_for("bob")
        assert len((yield a.add_user_keys("bob", [key_line(2)]))) == 2
        assert (yield b.get_user_keys("bob")) != []
        assert (yield a.remove_user_keys("bob")) == 2
        yield a.add_transfer({"alice": 10}, 1, 60)
        assert (yield b.get_transfer(["alice"], [1]))["alice"] == [10]
        yield a.reset_transfer("alice", [1])
        assert (yield a.spend_once("link-1", 60)) is True
        assert (yield b.spend_once("link-1", 60)) is False
        assert (yield b.is_spent("link-1")) is True
        yield a.log_out("login-1", 60)
        assert "login-1" in set((yield b.logged_out()))
        yield a.keep_pending_login("state-1", '{"nonce": "n"}', 60)
        yield a.keep_pending_login("state-2", '{"nonce": "n"}', 60)
        assert (yield b.take_pending_login("state-1")) == '{"nonce": "n"}'
        assert (yield a.take_pending_login("state-1")) is None
        yield b.drop_pending_logins(["state-2"])
        assert (yield a.take_pending_login("state-2")) is None
        nodes = Recorder()
        b.subscribe_nodes(nodes)
        yield a.announce_node('{"CONNECT_PROXY_URL": "https://x"}', 60, tell=True)
        yield nodes.wait_for("a")
        assert (yield b.node_records()) == {"a": '{"CONNECT_PROXY_URL": "https://x"}'}
        yield a.withdraw_node()
        assert (yield b.node_records()) == {}
        assert (yield a.delete("abc123")) is True
        yield a.ping()


class RedisOutageTests(unittest.TestCase):
    """Kill Redis: fail fast, keep serving cached routes; restart it: recover alone."""

    timeout = 20

    def setUp(self) -> None:
        self.server = RedisServer(temp_dir(self))
        self.server.start()
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def test_outage_and_recovery(self) -> Any:
        store = new_store(self.server, node_id="a")
        store.start()
        self.addCleanup(store.stop)
        yield store.when_connected()
        cache_clock = Clock()
        cache = CachingStore(store, 120, cache_clock)
        seen = Recorder()
        cache.subscribe(seen)
        yield cache.create(record())
        yield cache.claim_tunnel(holder(), 30)
        yield seen.wait_for("abc123", 2)  # our own changes come back on the channel too
        assert (yield cache.get("abc123")) == record()
        assert (yield cache.get_tunnel("abc123")) == holder()
        cache_clock.advance(500)  # cached entries expired: only a fallback now

        seen.seen.clear()
        lost = seen.wait_for(None)  # the subscriber noticed
        self.server.kill()
        start = time.monotonic()
        try:
            yield store.ping()
        except StoreUnavailable as e:
            assert "127.0.0.1" in str(e)
        else:
            raise AssertionError("ping succeeded with Redis dead")
        assert time.monotonic() - start < store.timeout
        yield lost
        yield fail_fast(lambda: store.ping(), lambda: cache.create(record("new1")),
                     lambda: cache.claim_tunnel(holder(tunnel="t2"), 30),
                     lambda: cache.get("unknown"), lambda: store.list_sessions(),
                     lambda: store.keep_pending_login("state-1", "{}", 60),
                     lambda: store.take_pending_login("state-1"))
        # Cached routes keep working.
        assert (yield cache.get("abc123")) == record()
        assert (yield cache.get_tunnel("abc123")) == holder()

        # Same port, no restart of the store.
        self.server.start()
        yield store.when_connected()
        yield store.ping()
        # Nothing was persisted: the old session is gone and the cache learns that.
        assert (yield cache.get("abc123")) is None
        yield cache.create(record("after"))
        assert (yield cache.claim_tunnel(holder("after"), 30)) is None
        assert (yield cache.get_tunnel("after")) == holder("after")

    @defer.inlineCallbacks
    def test_start_before_redis_is_up(self) -> Any:
        self.server.kill()
        store = new_store(self.server)
        store.start()
        self.addCleanup(store.stop)
        try:
            yield store.ping()
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("ping succeeded without Redis")
        self.server.start()
        yield store.when_connected()
        yield store.create(record())
        assert (yield store.get("abc123")) == record()


    @defer.inlineCallbacks
    def test_a_command_made_as_the_store_starts_waits_for_its_first_connection(self) -> Any:
        """A request that reached a node as it started (a restart quicker than a load
        balancer's checks) was answered 503 "Redis ... unavailable (not connected yet)":
        a command made before the store's first connection waits for it, as long as a
        command may take; later outages still fail at once (test_outage_and_recovery)."""
        self.server.kill()
        store = new_store(self.server, timeout=5.0)
        store.start()
        self.addCleanup(store.stop)
        asked = store.get("abc123")
        assert not asked.called  # (it failed at once)
        self.server.start()
        assert (yield asked) is None  # answered once connected: no such session
        self.server.kill()
        yield fail_fast(lambda: store.get("abc123"))

    @defer.inlineCallbacks
    def test_a_command_made_as_the_store_starts_fails_when_redis_stays_away(self) -> Any:
        self.server.kill()
        store = new_store(self.server, timeout=0.5)
        store.start()
        self.addCleanup(store.stop)
        start = time.monotonic()
        try:
            yield store.get("abc123")
        except StoreUnavailable as e:
            assert "not connected yet" in str(e) or "refused" in str(e), e
        else:
            raise AssertionError("a get succeeded without Redis")
        assert 0.4 < time.monotonic() - start < 2


_TLS_SKIP = redis_tls_support()
if _TLS_SKIP:
    print(f"skipping Redis TLS tests: {_TLS_SKIP}")


@pytest.mark.skipif(_TLS_SKIP is not None, reason=_TLS_SKIP or "")
class RedisTLSTests(unittest.TestCase):
    timeout = TIMEOUT

    def setUp(self) -> None:
        base = temp_dir(self)
        self.tls = make_tls_files(base / "tls")
        self.server = RedisServer(base / "redis", tls=self.tls, tls_auth_clients=True)
        self.server.start()
        self.addCleanup(self.server.stop)

    def tls_store(self, **kw: Any) -> RedisStore:
        kw.setdefault("tls_cert_file", str(self.tls.client_cert))
        kw.setdefault("tls_key_file", str(self.tls.client_key))
        return new_store(self.server, tls=True, **kw)

    @defer.inlineCallbacks
    def use(self, store: RedisStore) -> Any:
        store.start()
        self.addCleanup(store.stop)
        yield store.when_connected()
        yield store.create(record())
        assert (yield store.get("abc123")) == record()

    def test_verified(self) -> Any:
        return self.use(self.tls_store(tls_ca_file=str(self.tls.ca_cert)))

    def test_skip_verify(self) -> Any:
        return self.use(self.tls_store(tls_skip_verify=True,
                                       tls_ca_file=str(self.tls.other_ca_cert)))

    @defer.inlineCallbacks
    def test_wrong_ca_is_refused(self) -> Any:
        store = self.tls_store(tls_ca_file=str(self.tls.other_ca_cert))
        failed = store.next_connection_failure()
        store.start()
        self.addCleanup(store.stop)
        reason = yield failed
        assert "certificate verify failed" in reason, reason
        try:
            yield store.ping()
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("connected to a server signed by an untrusted CA")


class RedisTLSNameTests(unittest.TestCase):
    """A certificate signed by the trusted CA, but for another name than the address."""

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_a_certificate_for_another_name_is_refused_in_plain_words(self) -> Any:
        base = temp_dir(self)
        tls = make_tls_files(base / "tls", server_dns="redis.example", server_ip=None)
        server = RedisServer(base / "redis", tls=tls)
        server.start()
        self.addCleanup(server.stop)
        store = new_store(server, tls=True, tls_ca_file=str(tls.ca_cert))
        failed = store.next_connection_failure()
        store.start()
        self.addCleanup(store.stop)
        reason = yield failed
        assert reason == ("TLS: Redis's certificate does not name 127.0.0.1 (the host of "
                          "CONNECT_REDIS_ADDRESS)"), reason


class RedisUserKeysTests(UserKeysContract, RedisCase):
    """Users' SSH keys: the same semantics as in memory, on two nodes sharing one Redis."""

    def setUp(self) -> Any:
        return self.two_nodes()

    @defer.inlineCallbacks
    def test_layout_next_to_sessions(self) -> Any:
        # A session and a user with the same name do not meet.
        yield self.store.create(record("keys"))
        yield self.store.set_user_keys("keys", [key_line(1)])
        p = self.store.prefix
        assert json.loads((yield self.store.command("GET", f"{p}:_keys:keys"))) == [key_line(1)]
        assert [r.id for r in (yield self.other.list_sessions())] == ["keys"]
        assert (yield self.other.get("keys")) == record("keys")
        # A malformed stored value reads as no keys (logged); adding replaces it.
        yield self.store.command("SET", f"{p}:_keys:bob", "{not json")
        assert (yield self.other.get_user_keys("bob")) == []
        assert (yield self.other.add_user_keys("bob", [key_line(2)])) == [key_line(2)]
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_key_added_on_one_node_is_seen_by_the_others_cache_at_once(self) -> Any:
        a = CachingStore(self.store, 120, reactor)
        b = CachingStore(self.other, 120, reactor)
        assert (yield b.get_user_keys("alice")) == []  # cached on B for 120 s...
        heard = Recorder()
        b.subscribe_user_keys(heard)
        yield a.add_user_keys("alice", [key_line(1)])
        yield heard.wait_for("alice")  # ...until A's change is published
        assert (yield b.get_user_keys("alice")) == [key_line(1)]

    @defer.inlineCallbacks
    def test_import_of_a_keys_file(self) -> Any:
        root = temp_dir(self)
        path = key_file_path(str(root))
        path.parent.mkdir(parents=True)
        _, text = real_key()
        path.write_text(json.dumps({"users": {"alice": [text]}}))
        yield self.store.set_user_keys("alice", [key_line(1)])
        job = FileImport(self.store, str(root), reactor)
        job.start()
        assert (yield job.done) == 1
        assert (yield self.other.get_user_keys("alice")) == [key_line(1), text]
        assert not path.exists()
