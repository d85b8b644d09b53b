from scapy.layers.l2 import ARP, Ether

from proto.arp import garp_frame


def test_garp_frame_is_a_broadcast_announcement_scapy_agrees_with():
    mac = bytes.fromhex("020000000a0b")
    f = Ether(garp_frame(mac, "198.18.0.100"))
    assert f.dst == "ff:ff:ff:ff:ff:ff" and f.src == "02:00:00:00:0a:0b" and f.type == 0x0806
    a = f[ARP]
    assert (a.op, a.psrc, a.pdst, a.hwsrc, a.hwdst) == (1, "198.18.0.100", "198.18.0.100",
                                                         "02:00:00:00:0a:0b", "00:00:00:00:00:00")
    assert len(garp_frame(mac, "198.18.0.100")) == 42
