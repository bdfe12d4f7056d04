"""The proxy's idle upstream pool: deadlines instead of a timer per connection."""

from __future__ import annotations

from twisted.internet.task import Clock

from studios_gateway.http.upstream import IdlePool


class Conn:
    def __init__(self, epoch: int = 0) -> None:
        self.closed = False
        self.pool_entry: object = None
        self.pool_epoch = epoch

    def fit_for_reuse(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def test_keep_alive_reuse_sets_one_timer_for_the_pool_not_one_per_request() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)
    conn = Conn()
    for _ in range(100):  # a request at a time, each on the connection the last left
        pool.put("s", conn)
        assert pool.take("s") is conn
        clock.advance(0.01)
    assert len(clock.getDelayedCalls()) == 1
    pool.put("s", conn)
    clock.advance(3.9)
    assert not conn.closed and pool.count("s") == 1
    clock.advance(0.2)  # past 4 s since it was put back: take refuses it now...
    assert pool.take("s") is None and conn.closed
    pool.put("s", conn := Conn())
    clock.advance(4.0 + 4.0 / IdlePool.SWEEPS)  # ...and a sweep closes it soon after
    assert conn.closed and pool.count() == 0


def test_a_connection_past_its_deadline_is_never_handed_out() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)
    old, new = Conn(), Conn()
    pool.put("s", old)
    clock.advance(1.0)
    pool.put("s", new)
    pool._sweep_call.cancel()  # type: ignore[union-attr]  # a sweep that comes late
    pool._sweep_call = None
    clock.seconds = lambda: 4.5  # type: ignore[method-assign]
    assert pool.take("s") is new  # still within its 4 s
    assert pool.take("s") is None and old.closed and pool.count() == 0  # 3.5 s late
    clock.seconds = lambda: 9.0  # type: ignore[method-assign]
    pool.put("s", new)
    pool.put("t", Conn())
    clock.seconds = lambda: 13.5  # type: ignore[method-assign]
    assert pool.take("s") is None and new.closed and pool.count() == 1


def test_sweeps_close_the_expired_of_every_session_and_stop_when_nothing_is_idle() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=2, idle_timeout=4.0)
    a, b, c = Conn(), Conn(), Conn()
    pool.put("s", a)
    clock.advance(0.1)
    pool.put("t", b)
    clock.advance(2.0)
    pool.put("s", c)
    assert not pool.put("s", Conn())  # full
    clock.advance(1.9)  # 4.0 s: a expires; the next sweep no sooner than 0.5 s later
    assert a.closed and not b.closed and pool.count() == 2
    clock.advance(0.5)
    assert b.closed and not c.closed
    clock.advance(2.0)
    assert c.closed and pool.count() == 0 and clock.getDelayedCalls() == []
    pool.put("s", a)
    pool.close_all()
    assert clock.getDelayedCalls() == []


def test_closing_a_connection_may_discard_it_from_the_pool_on_the_way() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)

    class Eager(Conn):
        def close(self) -> None:
            super().close()
            pool.discard("s", self)  # its connectionLost, at once

    stale, fresh = Eager(), Eager()
    pool.put("s", fresh)
    pool.put("s", stale)
    stale.closed = True  # unfit: closed on the way
    assert pool.take("s") is fresh and pool.count() == 0
    pool.put("s", stale)
    clock.seconds = lambda: 100.0  # type: ignore[method-assign]
    assert pool.take("s") is None and pool.count() == 0


def test_pool_take_prefers_the_given_connection_within_its_deadline() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)
    a, b, c = Conn(), Conn(), Conn()
    pool.put("s", a)
    clock.advance(1)
    pool.put("s", b)
    pool.put("s", c)
    assert pool.take("s", prefer=a) is a  # not the most recent, but asked for
    assert pool.take("s", prefer=a) is c  # a is not idle: the most recent
    pool.put("s", a)
    b.closed = True
    assert pool.take("s", prefer=b) is a  # unfit: the usual choice (b closed on the way)
    pool.put("s", d := Conn())
    clock.advance(3.5)  # d's deadline is 4 s away, a's... a was taken; put e late
    pool.put("s", e := Conn())
    clock.advance(1.0)  # d past its deadline, e not
    assert pool.take("s", prefer=d) is e and d.closed


def test_a_connection_busy_when_its_session_moved_is_not_kept_when_it_comes_back() -> None:
    # A rolling restart: a request runs on a connection into the old holder's tunnel
    # when the registry says the studio moved; kept afterwards, it would carry every
    # request into that retired tunnel until the old node's drain ends (then one fails).
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)
    busy, other = Conn(pool.epoch), Conn(pool.epoch)
    pool.drop("s")  # busy is out (serving a request): nothing idle to close
    assert not pool.put("s", busy)  # back from its request: not kept (the caller closes)
    assert pool.put("t", other)  # another session's connection is not concerned
    fresh = Conn(pool.epoch)  # asked for after the move
    assert pool.put("s", fresh) and pool.take("s") is fresh
    pool.drop(None)  # changes may have been missed: none from before is kept
    assert other.closed and not pool.put("t", Conn(0)) and pool.put("t", Conn(pool.epoch))


def test_drops_are_remembered_for_a_while_only() -> None:
    clock = Clock()
    pool = IdlePool(clock, max_idle=4, idle_timeout=4.0)
    for i in range(100):
        pool.drop(f"s{i}")
    clock.advance(IdlePool.REMEMBER_DROPS + 1)
    pool.drop("last")  # (prunes what is older than REMEMBER_DROPS)
    assert list(pool._dropped) == ["last"]
    assert pool.put("s1", Conn(0))  # busy for longer than that: kept as before
