"""The TCP state table against the kernel's rows, and the timer wheel."""
from director import tcp_state as T
from director.timer import TimerWheel


def test_table_shape_and_a_few_kernel_cells():
    assert len(T.TRANSITIONS) == 3 and all(len(r) == 4 for r in T.TRANSITIONS)
    assert all(len(cells) == len(T.STATES) for r in T.TRANSITIONS for cells in r)
    nx = T.next_state
    assert nx(T.NONE, T.INPUT_ONLY, 0x02) == T.SYN_RECV          # client SYN
    assert nx(T.SYN_RECV, T.OUTPUT, 0x12) == T.SYN_RECV          # server SYN+ACK
    assert nx(T.SYN_RECV, T.INPUT, 0x10) == T.ESTABLISHED        # client ACK
    assert nx(T.ESTABLISHED, T.INPUT, 0x11) == T.CLOSE_WAIT      # client FIN first
    assert nx(T.ESTABLISHED, T.OUTPUT, 0x11) == T.FIN_WAIT       # server FIN first
    assert nx(T.ESTABLISHED, T.INPUT_ONLY, 0x11) == T.FIN_WAIT   # DR-like: no replies seen
    assert nx(T.CLOSE_WAIT, T.OUTPUT, 0x11) == T.TIME_WAIT
    assert nx(T.ESTABLISHED, T.INPUT, 0x04) == T.CLOSE           # RST beats everything
    assert nx(T.ESTABLISHED, T.INPUT, 0x16) == T.CLOSE           # SYN+RST: RST wins
    assert nx(T.SYN_RECV, T.INPUT, 0x04) == T.SYN_RECV           # the kernel keeps SYN_RECV on a client RST
    assert nx(T.ESTABLISHED, T.INPUT, 0x00) == T.CLOSE           # no flags: tcp_state_idx -1 -> CLOSE
    assert nx(T.NONE, T.INPUT, 0x10) == T.ESTABLISHED            # mainline's sNO ack -> sES


def test_kernel_default_timeouts():
    t = T.timeout_table(T.DEFAULT_TIMEOUTS)
    assert t[T.ESTABLISHED] == 900 and t[T.SYN_RECV] == 60 and t[T.FIN_WAIT] == 120
    assert t[T.TIME_WAIT] == 120 and t[T.CLOSE] == 10 and t[T.CLOSE_WAIT] == 60 and t[T.LAST_ACK] == 30
    assert T.DEFAULT_TIMEOUTS["udp"] == 300


class Item:
    def __init__(self, expires):
        self.expires, self.timer_tick, self.alive = expires, 0, True


def test_wheel_expires_on_time_and_not_before():
    w, gone = TimerWheel(0.1), []
    a = Item(1.0)
    w.schedule(a)
    w.advance(0.95, gone.append)
    assert gone == []
    w.advance(1.0, gone.append)
    assert gone == [a] and not a.alive


def test_wheel_later_refresh_is_lazy_and_earlier_refresh_refiles():
    w, gone = TimerWheel(0.1), []
    a, b = Item(1.0), Item(100.0)
    w.schedule(a)
    w.schedule(b)
    w.refresh(a, 5.0)         # pushed later: stays filed at 1.0, re-filed when due
    w.refresh(b, 2.0)         # pulled earlier: filed again at 2.0
    w.advance(1.5, gone.append)
    assert gone == []
    w.advance(2.0, gone.append)
    assert gone == [b]
    w.advance(4.9, gone.append)
    assert gone == [b]
    w.advance(5.0, gone.append)
    assert gone == [b, a]
    w.advance(200.0, gone.append)
    assert gone == [b, a]       # b's stale entry at 100 s does not fire twice


def test_wheel_big_jump_and_dead_items():
    w, gone = TimerWheel(0.01), []
    items = [Item(float(i)) for i in range(1, 50)]
    for it in items:
        w.schedule(it)
    items[3].alive = False
    w.advance(10_000.0, gone.append)
    assert len(gone) == 48 and items[3] not in gone
