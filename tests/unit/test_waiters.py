from studios_gateway.waiters import EmptyWaiters


def test_fires_now_when_empty_else_at_the_next_fire_once() -> None:
    w = EmptyWaiters()
    now: list[None] = []
    w.wait(True).addCallback(now.append)
    assert now == [None]
    later: list[None] = []
    w.wait(False).addCallback(later.append)
    w.wait(False).addCallback(later.append)
    assert later == []
    w.fire()
    assert later == [None, None]
    w.fire()  # nobody left waiting: nothing fires twice
    assert later == [None, None]
