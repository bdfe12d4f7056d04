"""bench.http's ratio per round: the runs made side by side, paired in order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.http import rounds


def test_rounds_pairs_runs_in_order_and_gives_median_and_range() -> None:
    # rounds 2/1, 1/2, 3/1 (sorting each side first would pair 1/1, 2/1, 3/2)
    assert rounds([2.0, 1.0, 3.0], [1.0, 2.0, 1.0]) == "2.00 (0.50-3.00)"


def test_rounds_skips_a_zero_baseline_and_says_when_nothing_is_left() -> None:
    assert rounds([4.0, 3.0], [0.0, 2.0]) == "1.50 (1.50-1.50)"
    assert rounds([4.0], [0.0]) == "-"


def test_rounds_refuses_unpaired_runs() -> None:
    with pytest.raises(ValueError):
        rounds([1.0, 2.0], [1.0])


def _rows(section: object, title_start: str) -> list[list[str]]:
    for title, _, rows in section.tables:  # type: ignore[attr-defined]
        if title.startswith(title_start):
            return rows
    raise AssertionError(f"no table {title_start!r}")


def test_small_responses_pairs_each_round_of_requests_per_second(monkeypatch) -> None:
    import bench.http as bh
    from bench.arena import GATEWAY, Target

    # per (path, connections): one run per round, in the order the rounds are made
    rps = {(GATEWAY, 1): [100.0, 300.0, 200.0], ("nginx", 1): [100.0, 100.0, 200.0],
           (GATEWAY, 32): [400.0, 400.0, 400.0], ("nginx", 32): [100.0, 200.0, 400.0]}
    calls: dict[tuple[str, int], int] = {}

    def fake_wrk(url, conns, seconds, headers):
        name = GATEWAY if ":1/" in url else "nginx"
        i = calls.get((name, conns), 0)
        calls[(name, conns)] = i + 1
        # p50 and p99 differ from req/s, so reading the wrong field shows
        return SimpleNamespace(rps=rps[(name, conns)][i], p50_ms=9.0, p99_ms=7.0, errors=0)

    monkeypatch.setattr(bh, "wrk", fake_wrk)
    arena = SimpleNamespace(http={GATEWAY: Target(GATEWAY, 1), "nginx": Target("nginx", 2)},
                            notes=[])
    section = bh.small_responses(SimpleNamespace(runs=3, seconds=1.0), arena)
    [row] = _rows(section, "Ratios of requests/s")
    # medians 200 / 100 and 400 / 200; rounds 1, 3, 1 and 4, 2, 1
    assert row == ["gateway / nginx", "2.00", "2.00", "1.00 (1.00-3.00)", "2.00 (1.00-4.00)"]


def _fake_rounds(monkeypatch, p99: dict[str, list[float]]) -> None:
    """echo_rounds answering, per path, one round of 100 equal round trips per value (so
    each round's p50 and p99 are that value)."""
    import bench.http as bh

    def fake(targets, rate, seconds, runs):
        assert runs == 3 and set(targets) == set(p99)
        return {name: [[v] * 100 for v in p99[name]] for name in targets}

    monkeypatch.setattr(bh, "echo_rounds", fake)


def test_websocket_echo_pools_round_trips_and_pairs_each_round_of_p99(monkeypatch) -> None:
    import bench.http as bh
    from bench.arena import GATEWAY, Target

    _fake_rounds(monkeypatch, {GATEWAY: [2.0, 6.0, 3.0], "nginx": [1.0, 2.0, 3.0]})
    arena = SimpleNamespace(ws={GATEWAY: Target(GATEWAY, 1), "nginx": Target("nginx", 2)},
                            notes=[])
    section = bh.websocket_echo(SimpleNamespace(runs=3, ws_rate=200, ws_seconds=1.0), arena)
    [row] = _rows(section, "Ratios of round-trip time")
    # over all round trips: p50 3 / 2, p99 6 / 3; per round 2, 3, 1
    assert row == ["gateway / nginx", "1.50", "2.00", "2.00 (1.00-3.00)"]


def test_websocket_echo_adds_the_c_tunnel_against_nginx(monkeypatch) -> None:
    """With the stunnel pair and nginx both measured, one more row sets them side by side:
    the same path's shape in C against one proxy, the floor the 1.5x target meets."""
    import bench.http as bh
    from bench.arena import GATEWAY, NGINX, STUNNEL, Target

    p99 = {GATEWAY: [3.0, 3.0, 3.0], NGINX: [1.0, 2.0, 2.0], STUNNEL: [2.0, 3.0, 4.0]}
    _fake_rounds(monkeypatch, p99)
    arena = SimpleNamespace(ws={n: Target(n, i) for i, n in enumerate(p99)}, notes=[])
    section = bh.websocket_echo(SimpleNamespace(runs=3, ws_rate=200, ws_seconds=1.0), arena)
    rows = _rows(section, "Ratios of round-trip time")
    assert [r[0] for r in rows] == [f"gateway / {NGINX}", f"gateway / {STUNNEL}",
                                    f"{STUNNEL} / {NGINX} (the path's shape in C)"]
    # over all: p50 3 / 2, p99 4 / 2; per round 2, 1.5, 2
    assert rows[2][1:] == ["1.50", "2.00", "2.00 (1.50-2.00)"]


def test_websocket_echo_says_what_each_extra_hop_adds(monkeypatch) -> None:
    import bench.http as bh
    from bench.arena import DIRECT, GATEWAY, NGINX, Target

    p99 = {GATEWAY: [1.0] * 3, NGINX: [0.6] * 3, DIRECT: [0.2] * 3}
    _fake_rounds(monkeypatch, p99)
    arena = SimpleNamespace(ws={n: Target(n, i) for i, n in enumerate(p99)}, notes=[])
    section = bh.websocket_echo(SimpleNamespace(runs=3, ws_rate=200, ws_seconds=1.0), arena)
    # (1.0 - 0.2) ms over four hops; (0.6 - 0.2) over two
    assert _rows(section, "What each extra hop adds") == [
        [GATEWAY, "4", "200", "200"], [NGINX, "2", "200", "200"]]


def test_echo_rounds_takes_turns_within_each_round(monkeypatch) -> None:
    """Every path's connection opens (and warms) first; then each round gives every path
    its turns in order, so a stretch of load falls on all paths alike."""
    import bench.http as bh
    from bench.arena import Target

    log: list[object] = []

    class FakeClient:
        def __init__(self, target: Target) -> None:
            self.name = target.name
            log.append(("open", self.name))

        def round_trip(self, text: str) -> float:
            return 0.0  # the warm-up's

        def close(self) -> None:
            log.append(("close", self.name))

    def fake_times(client, rate, count):
        log.append((client.name, count))
        return [float(len(log))] * count

    monkeypatch.setattr(bh, "EchoClient", FakeClient)
    monkeypatch.setattr(bh, "echo_times", fake_times)
    got = bh.echo_rounds({"a": Target("a", 1), "b": Target("b", 2)}, rate=200, seconds=2.0,
                         runs=2)
    turn = [("a", 200), ("b", 200)]
    assert log == [("open", "a"), ("open", "b"), *turn * 4, ("close", "a"), ("close", "b")]
    assert [len(r) for r in got["a"]] == [400, 400] and [len(r) for r in got["b"]] == [400, 400]
    assert got["a"][0][:1] == [3.0] and got["a"][1][-1:] == [9.0]  # rounds kept apart


def test_bulk_pairs_each_round_of_download_and_upload(monkeypatch, tmp_path) -> None:
    import bench.bulk as bb
    from bench.arena import GATEWAY, Target

    # seconds per transfer, per path, in the order the rounds make them: MB/s = size / s
    down = {GATEWAY: [1.0, 2.0, 4.0], "nginx": [2.0, 2.0, 2.0]}
    up = {GATEWAY: [4.0, 1.0, 2.0], "nginx": [1.0, 1.0, 4.0]}
    made = {"down": {}, "up": {}}

    def took(kind: str, table: dict, target: Target) -> float:
        i = made[kind].get(target.name, 0)
        made[kind][target.name] = i + 1
        return table[target.name][i]

    monkeypatch.setattr(bb, "download", lambda target: took("down", down, target))
    monkeypatch.setattr(bb, "upload", lambda target, payload, tool: took("up", up, target))
    monkeypatch.setattr(bb, "random_file", lambda path, mib: (path.write_bytes(b"x"), path)[1])
    arena = SimpleNamespace(http={GATEWAY: Target(GATEWAY, 1), "nginx": Target("nginx", 2)},
                            notes=[], work=tmp_path, tool=None)
    section = bb.scenario(SimpleNamespace(runs=3, bulk_mib=1, profile="off"), arena)
    [row] = _rows(section, "Ratios of throughput")
    # download: the gateway's 1, 1/2, 1/4 against nginx's 1/2 each: rounds 2, 1, 0.5,
    # medians 1/2 and 1/2; upload: 1/4, 1, 1/2 against 1, 1, 1/4: rounds 0.25, 1, 2,
    # medians 1/2 and 1 (sorting either side first would pair them otherwise)
    assert row == ["gateway / nginx", "1.00", "0.50", "1.00 (0.50-2.00)", "1.00 (0.25-2.00)"]


def test_bulk_places_the_uploads_by_hand_client_and_first_proxy_on_one_cpu(monkeypatch) -> None:
    import contextlib

    import bench.bulk as bb
    import bench.hops
    from bench.arena import GATEWAY, NGINX, Target

    placed: list[tuple[tuple[int, ...], int]] = []
    uploads: list[tuple[str, list[tuple[tuple[int, ...], int]]]] = []

    @contextlib.contextmanager
    def pinned(pids, cpu):
        placed.append((tuple(pids), cpu))
        yield
        placed.pop()

    def upload(target, payload, tool):
        uploads.append((target.name, sorted(placed)))
        return {GATEWAY: 2.0, NGINX: 1.0}[target.name]

    monkeypatch.setattr(bench.hops, "pinned", pinned)  # (under hops.placed)
    monkeypatch.setattr(bb, "upload", upload)
    arena = SimpleNamespace(http={GATEWAY: Target(GATEWAY, 1), NGINX: Target(NGINX, 2)},
                            pids={GATEWAY: [10, 11, 12], NGINX: [20, 12]}, tool=None)
    got = bb._placed_uploads(SimpleNamespace(runs=2), arena, "p", int(1e6), 0, 1)
    assert got == {GATEWAY: [0.5, 0.5], NGINX: [1.0, 1.0]}
    # curl (this process, 0) and the first proxy on CPU 0; the rest of the path on CPU 1
    assert uploads[:2] == [(GATEWAY, [((0,), 0), ((10,), 0), ((11, 12), 1)]),
                           (NGINX, [((0,), 0), ((12,), 1), ((20,), 0)])]
    assert not placed
