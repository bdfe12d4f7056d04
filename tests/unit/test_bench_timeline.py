"""bench.timeline's reading of `perf script` text: steps, fd names, preemptions."""

from __future__ import annotations

import pytest

from bench.timeline import journeys, marks, steps, tail99, tail_table

PID = 4242


def _sys(t: float, kind: str, nr: int, fd: str | None = None, pid: int = PID) -> str:
    args = f" ({fd}, 7f00, 10000, 0, 0, 0)" if kind == "enter" and fd else (
        " (3, 7f00, 7, 3e, 0, 0)" if kind == "enter" else " = 1")
    space = " " if kind == "enter" else "  "
    return (f"          twistd {pid} [000] {t:.6f}:{space}raw_syscalls:sys_{kind}: "
            f"NR {nr}{args}")


def _switch(t: float, prev: int, state: str, nxt: int) -> str:
    return (f"         swapper {prev} [000] {t:.6f}: sched:sched_switch: prev_comm=x "
            f"prev_pid={prev} prev_prio=120 prev_state={state} ==> next_comm=y "
            f"next_pid={nxt} next_prio=120")


def test_steps_name_fds_and_time_user_space_between_syscalls() -> None:
    text = "\n".join([
        _sys(1.000000, "enter", 232), _sys(1.000050, "exit", 232),   # epoll 50 us
        _sys(1.000053, "enter", 45, "11"), _sys(1.000055, "exit", 45),  # recv browser
        _sys(1.000081, "enter", 44, "f"), _sys(1.000097, "exit", 44),   # 26 us, send tunnel
        _sys(1.000100, "enter", 232),
    ])
    got = steps(text, PID, {"11": "browser", "f": "tunnel"})
    assert got["in recv browser"] == [pytest.approx(2.0)]
    assert got["recv browser -> send tunnel"] == [pytest.approx(26.0)]
    assert got["in send tunnel"] == [pytest.approx(16.0)]
    assert got["send tunnel -> epoll_wait"] == [pytest.approx(3.0)]
    assert got["epoll_wait -> recv browser"] == [pytest.approx(3.0)]


def test_a_preemption_is_taken_out_of_the_user_space_step() -> None:
    text = "\n".join([
        _sys(1.000000, "enter", 45, "11"), _sys(1.000002, "exit", 45),
        _switch(1.000010, PID, "R", 99),      # runnable, another process runs 20 us
        _switch(1.000030, 99, "S", PID),
        _sys(1.000040, "enter", 44, "f"), _sys(1.000050, "exit", 44),
    ])
    got = steps(text, PID, {"11": "browser", "f": "tunnel"})
    assert got["recv browser -> send tunnel"] == [pytest.approx(18.0)]
    assert got["preempted after recv browser"] == [pytest.approx(20.0)]


def test_a_preemption_inside_a_syscall_is_taken_out_of_it() -> None:
    text = "\n".join([
        _sys(1.000000, "enter", 44, "f"),
        _switch(1.000004, PID, "R+", 99),     # preempted during the send (R+: still runnable)
        _switch(1.000014, 99, "S", PID),
        _sys(1.000020, "exit", 44),
    ])
    got = steps(text, PID, {"f": "tunnel"})
    assert got["in send tunnel"] == [pytest.approx(10.0)]
    assert got["preempted in send tunnel"] == [pytest.approx(10.0)]


def test_sleeping_is_the_wait_not_a_preemption_and_other_pids_are_ignored() -> None:
    text = "\n".join([
        _sys(1.000000, "enter", 232), _switch(1.000001, PID, "S", 0),
        _sys(1.000010, "enter", 45, "11", pid=7),  # someone else's syscall
        _switch(1.000090, 0, "R", PID), _sys(1.000091, "exit", 232),
        # asleep between two syscalls too (a page fault's D): stays in the step
        _switch(1.000092, PID, "D", 0), _switch(1.000096, 0, "R", PID),
        _sys(1.000097, "enter", 45, "11"),
    ])
    got = steps(text, PID, {"11": "browser"})
    assert got["in epoll_wait"] == [pytest.approx(91.0)]
    assert got["preempted in epoll_wait"] == [pytest.approx(0.0)]
    assert got["epoll_wait -> recv browser"] == [pytest.approx(6.0)]
    assert got["preempted after epoll_wait"] == [pytest.approx(0.0)]
    assert not [k for k in got if "fd" in k]


def test_the_tail_is_the_99th_percentile_by_nearest_rank() -> None:
    assert tail99([5.0]) == 5.0
    assert tail99([float(x) for x in range(1, 101)]) == 99.0  # 1..100: the 99th value
    assert tail99([float(x) for x in range(200, 0, -1)]) == 198.0  # unsorted input
    assert tail99([1.0, 2.0, 3.0]) == 3.0


def test_a_message_is_followed_through_both_processes_and_its_tail_placed() -> None:
    """Gateway (PID) and studios-connect (pid 7): wake on the browser, send to the tunnel,
    the connect wakes on it and sends to the tool, wakes on the tool's echo and sends it
    back, the gateway wakes on the tunnel and answers the browser."""
    gw, conn = {"b": "browser", "t": "tunnel"}, {"u": "tunnel", "o": "tool"}

    def message(t0: float, tool_us: float) -> list[str]:
        t = t0
        lines = [_sys(t, "exit", 232), _sys(t + 2e-6, "enter", 45, "b"),
                 _sys(t + 30e-6, "enter", 44, "t")]                       # gateway in: 30
        t += 50e-6
        lines += [_sys(t, "exit", 232, pid=7), _sys(t + 1e-6, "enter", 45, "u", pid=7),
                  _sys(t + 20e-6, "enter", 44, "o", pid=7)]               # connect in: 20
        t += 20e-6 + tool_us * 1e-6
        lines += [_sys(t, "exit", 232, pid=7), _sys(t + 1e-6, "enter", 45, "o", pid=7),
                  _sys(t + 15e-6, "enter", 44, "u", pid=7)]               # connect out: 15
        t += 15e-6 + 25e-6
        lines += [_sys(t, "exit", 232), _sys(t + 1e-6, "enter", 45, "t"),
                  _sys(t + 10e-6, "enter", 44, "b")]                      # gateway out: 10
        return lines

    text = "\n".join([line for k in range(100) for line in
                      message(1.0 + k * 0.005, 5000.0 if k == 42 else 100.0)])
    found = journeys({"gateway": marks(text, PID, gw), "studios-connect": marks(text, 7, conn)})
    assert len(found) == 100
    spans = [round(b - a) for a, b in zip(found[0], found[0][1:], strict=False)]
    assert spans == [30, 20, 20, 100, 15, 25, 10]
    rows = tail_table(found)
    tool = next(r for r in rows if r.strip().startswith("tool:"))
    assert tool.split()[-4:] == ["100.0", "5000.0", "100", "%"]  # the slow one's tool
