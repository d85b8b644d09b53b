"""director.seqadj against a model of the two byte streams.

The model: the client sends data[0:N] starting at sequence number S (its ISN+1);
the real server must receive header + data starting at S.  Every segment the
client sends (first sends, retransmits before and at the insertion point,
later segments, keepalives, FIN) is mapped by the core; every byte it then
carries must be the model server stream's byte at that server position, and
every server ack number or SACK edge must map back to the number of client
bytes the server really holds.  S is drawn anywhere in 0..2**32-1, so the
streams wrap around.
"""
from hypothesis import given, settings, strategies as st

from director.seqadj import MOD, SeqAdj, after, before

FAST = settings(max_examples=400, deadline=None)

seqs = st.one_of(st.integers(0, MOD - 1), st.integers(MOD - 200, MOD - 1), st.integers(0, 200))
headers = st.binary(min_size=1, max_size=120)


@st.composite
def streams(draw):
    S = draw(seqs)
    header = draw(headers)
    data = draw(st.binary(min_size=1, max_size=600))
    n = len(data)
    segs = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["data", "first", "pure", "keepalive", "syn"]))
        if kind == "first":
            k = 0
            length = draw(st.integers(1, n))
        elif kind == "data":
            k = draw(st.integers(0, n))
            length = draw(st.integers(0, n - k))
        elif kind == "pure":
            k, length = draw(st.integers(0, n)), 0
        elif kind == "keepalive":
            k, length = -1, 0
        else:
            k, length = -1, draw(st.integers(0, n))      # SYN, perhaps with data (TFO)
        fin = k + (1 if kind == "syn" else 0) + length == n and kind != "keepalive" \
            and draw(st.booleans())
        segs.append((kind, k, length, fin))
    return S, header, data, segs


def send(adj, S, data, kind, k, length, fin):
    """One client segment through the core: (server seq of its first payload byte, payload)."""
    syn = kind == "syn"
    if syn:
        seq, payload = (S - 1) % MOD, data[:length]
    else:
        seq, payload = (S + k) % MOD, data[k:k + length] if k >= 0 else b""
    new_seq, prefix = adj.client_segment(seq, syn, fin, len(payload))
    first = (new_seq + 1) % MOD if syn else new_seq
    return seq, new_seq, first, prefix + payload


@FAST
@given(streams())
def test_every_byte_lands_at_its_server_position(case):
    S, header, data, segs = case
    adj = SeqAdj(S, header)
    server = header + data                      # what the server must hold, from position S
    H = len(header)
    covered = set()
    header_copies = 0
    for kind, k, length, fin in segs:
        seq, new_seq, first, payload = send(adj, S, data, kind, k, length, fin)
        if payload[:H] == header and (first - S) % MOD == 0 and payload:
            header_copies += 1
        for i, b in enumerate(payload):
            off = (first + i - S) % MOD
            assert off < len(server), "a byte beyond the model stream"
            assert server[off] == b, f"byte {i} of a {kind} segment lands at server offset {off}"
            covered.add(off)
        if not payload and not fin and kind != "syn":
            # a zero-length segment: at or before S unchanged, after S shifted by the header
            if k <= 0:
                assert new_seq == seq
            else:
                assert new_seq == (S + H + k) % MOD
    # the header is in the server's stream (at its one place) iff a segment started at S
    starts_at_S = any((kind == "syn" and (length or fin)) or (kind in ("data", "first") and k == 0
                      and (length or fin)) for kind, k, length, fin in segs)
    assert (0 in covered) == starts_at_S
    assert header_copies == sum(1 for kind, k, length, fin in segs
                                if (kind == "syn" and (length or fin))
                                or (kind in ("data", "first") and k == 0 and (length or fin)))


@FAST
@given(seqs, headers, st.integers(1, 5000), st.data())
def test_acks_and_sack_edges_count_only_client_bytes(S, header, n, data):
    """A server ack of j bytes past S acknowledges max(0, j - H) client bytes; one at or
    before S is unchanged.  SACK blocks map edge by edge to the client bytes they hold."""
    adj = SeqAdj(S, header)
    H = len(header)
    j = data.draw(st.integers(-100, H + n))
    got = adj.ack_out((S + j) % MOD)
    assert got == (S + max(0, j - H)) % MOD if j >= 0 else got == (S + j) % MOD
    # a SACK block [l, r) of server positions beyond the header: the same client bytes
    lo = data.draw(st.integers(0, H + n))
    hi = data.draw(st.integers(lo, H + n))
    left, right = adj.ack_out((S + lo) % MOD), adj.ack_out((S + hi) % MOD)
    held = {i for i in range(n) if lo <= H + i < hi}
    mapped = {i for i in range(n) if not before((S + i) % MOD, left) and before((S + i) % MOD, right)}
    assert mapped == held


@FAST
@given(seqs, headers, st.integers(1, 5000))
def test_seq_in_and_ack_out_are_inverse_past_the_header(S, header, k):
    adj = SeqAdj(S, header)
    x = (S + k) % MOD
    assert adj.ack_out(adj.seq_in(x)) == x


def test_wraparound_by_hand():
    """S two bytes before 2**32: the client's byte 3 (seq 1) is server position 1 + 28."""
    adj = SeqAdj(MOD - 2, b"H" * 28)
    assert adj.client_segment(MOD - 2, False, False, 100) == (MOD - 2, b"H" * 28)
    assert adj.seq_in(1) == 29
    assert adj.ack_out(29 + 97) == 98          # server has header + 100 bytes
    assert adj.ack_out(5) == MOD - 2           # only part of the header acked: nothing of ours
    assert adj.ack_out(MOD - 2) == MOD - 2
    assert adj.state() == (MOD - 2, 28, 0)


def test_retransmitted_first_segment_gets_the_header_each_time():
    adj = SeqAdj(1000, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    for _ in range(3):
        assert adj.client_segment(1000, False, False, 10)[1] == adj.header
    assert adj.client_segment(1010, False, False, 10) == (1010 + len(adj.header), b"")
    assert adj.client_segment(1000, False, False, 0) == (1000, b"")      # pure ACK: no header
    assert adj.client_segment(999, False, False, 0) == (999, b"")        # keepalive probe
    assert adj.client_segment(1000, False, True, 0)[1] == adj.header     # FIN without data


def test_serial_comparison():
    assert after(0, MOD - 1) and before(MOD - 1, 0)
    assert not after(5, 5) and not before(5, 5)
