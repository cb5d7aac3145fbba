#!/usr/bin/python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/.

Real frames (tests/fixtures: Scapy's tunnel vectors, the kernel's VXLAN
captures) and frames laid out here field by field for the node the
`pipeline` target builds (DESIGN.md's address plan: node1 192.168.100.1,
pods 10.244.1.2 and .3, peer node2 192.168.100.2 with 10.244.2.0/24);
TSO super-frames with their virtio-net headers and UDP GRO bursts for
`offload`; the control protocol's documented request lines for
`control_request`; CNI configurations as runtimes write them for
`cni_config`. Each seed is prefixed as its target reads its input (see
each target's module doc). Standard library only.

Run from the repository root: python3 fuzz/make_seeds.py
"""
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ip(s):
    return bytes(int(x) for x in s.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def sum16(b):
    if len(b) % 2:
        b += b"\0"
    return sum(struct.unpack("!%dH" % (len(b) // 2), b))


GW1 = mac("02:0a:0f:4e:28:74")  # derived_mac(0x0a, "node1")
VTEP1 = mac("02:0e:0f:4e:28:74")  # derived_mac(0x0e, "node1")
PROXY_MAC = b"\xee" * 6
POD1, POD2 = mac("0a:58:0a:f4:01:02"), mac("0a:58:0a:f4:01:03")
NODE1_MAC, NODE2_MAC = mac("02:00:c0:a8:64:01"), mac("02:00:c0:a8:64:02")
NODE2_VTEP = mac("d6:8a:5e:47:3c:02")


def ipv4(src, dst, proto, payload, ttl=64, df=False, ident=0x1C46, tos=0):
    h = struct.pack(
        "!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident,
        0x4000 if df else 0, ttl, proto, 0, ip(src), ip(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def pseudo(src, dst, proto, length):
    return sum16(ip(src) + ip(dst) + struct.pack("!BBH", 0, proto, length))


def udp(src, dst, sport, dport, data, checksum=True):
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    if checksum:
        c = (~fold(pseudo(src, dst, 17, len(u)) + sum16(u))) & 0xFFFF or 0xFFFF
        u = u[:6] + struct.pack("!H", c) + u[8:]
    return u


def tcp(src, dst, seq, data, flags=0x18, partial=False):
    t = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, flags, 64000, 0, 0) + data
    p = pseudo(src, dst, 6, len(t))
    c = fold(p) if partial else (~fold(p + sum16(t))) & 0xFFFF
    return t[:16] + struct.pack("!H", c) + t[18:]


def icmp_echo(data=b"podswitch ping payload.."):
    e = struct.pack("!BBHHH", 8, 0, 0, 0x0D2F, 1) + data
    return e[:2] + struct.pack("!H", csum(e)) + e[4:]


def eth(dst, src, payload, ethertype=0x0800):
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(op, sha, spa, tha, tpa, dst=b"\xff" * 6):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + ip(spa) + tha + ip(tpa)
    return eth(dst, sha, body, 0x0806)


def vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    # Host byte order (little-endian here), as AF_PACKET gives it.
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def pcap_frames(path):
    b = open(path, "rb").read()
    off = 24
    while off < len(b):
        _, _, incl, _ = struct.unpack("<IIII", b[off:off + 16])
        yield b[off + 16:off + 16 + incl]
        off += 16 + incl


def swap_ends(frame):
    """The frame sent the other way: MACs and IPv4 addresses of the outer
    and (VXLAN) inner headers swapped. Checksums stay right: a swap keeps
    every sum."""
    f = bytearray(frame)

    def swap(a, b, n):
        f[a:a + n], f[b:b + n] = f[b:b + n], f[a:a + n]

    swap(0, 6, 6)
    swap(26, 30, 4)
    inner = 14 + 20 + 8 + 8
    if len(f) >= inner + 34:
        swap(inner, inner + 6, 6)
        swap(inner + 26, inner + 30, 4)
    return bytes(f)


# Backend bytes of the pipeline target: % 5 -> vxlan, udp, ipip, host-gw,
# directrouting; | 0x08 proxy-ARP; | 0x10 a virtio-net header first.
VXLAN, UDP, IPIP, HOSTGW, DIRECT = range(5)
PROXY, VNET = 0x08, 0x10
# Port bytes: % 4 -> pod 1, pod 2, underlay, host; | 0x80 traced too.
P1, P2, UNDER, HOST, TRACE = 0, 1, 2, 3, 0x80


def pipeline_seeds():
    vectors = json.load(open(os.path.join(ROOT, "tests/fixtures/scapy_vectors.json")))
    backend = {"vxlan": VXLAN, "udp": UDP, "ipip": IPIP}
    for v in vectors["vectors"]:
        outer = bytes.fromhex(v["outer"])
        write("pipeline", "scapy-" + v["name"], bytes([UNDER, backend[v["mode"]]]) + outer)
    for name in ("csum", "nocsum"):
        path = os.path.join(ROOT, "tests/fixtures/kernel_vxlan_%s.pcap" % name)
        for i, frame in enumerate(pcap_frames(path)):
            write("pipeline", "kernel-vxlan-%s-%d" % (name, i), bytes([UNDER, VXLAN]) + swap_ends(frame))

    def pod_udp(src_mac, dst_mac, src, dst, ttl=64, df=False, n=32):
        return eth(dst_mac, src_mac, ipv4(src, dst, 17, udp(src, dst, 40000, 5201, bytes(i & 0xFF for i in range(n))), ttl=ttl, df=df))

    def pod_ping(src_mac, dst_mac, src, dst, ttl=64):
        return eth(dst_mac, src_mac, ipv4(src, dst, 1, icmp_echo(), ttl=ttl))

    seeds = {
        "pod-to-pod-bridged": (P1, VXLAN, pod_udp(POD1, POD2, "10.244.1.2", "10.244.1.3")),
        "pod-to-pod-routed": (P1, VXLAN, pod_udp(POD1, GW1, "10.244.1.2", "10.244.1.3")),
        "arp-for-gateway": (P1, VXLAN, arp(1, POD1, "10.244.1.2", b"\0" * 6, "10.244.1.1")),
        "arp-for-pod": (P1, VXLAN, arp(1, POD1, "10.244.1.2", b"\0" * 6, "10.244.1.3")),
        "arp-reply": (P2, VXLAN, arp(2, POD2, "10.244.1.3", GW1, "10.244.1.1", GW1)),
        "to-host": (P1 | TRACE, VXLAN, pod_ping(POD1, GW1, "10.244.1.2", "10.96.0.1")),
        "from-host": (HOST, VXLAN, pod_ping(GW1, GW1, "10.244.1.1", "10.244.1.2")),
        "ttl-1": (P1, UDP, pod_ping(POD1, GW1, "10.244.1.2", "10.244.2.5", ttl=1)),
        "df-too-big": (P1, VXLAN, pod_udp(POD1, GW1, "10.244.1.2", "10.244.2.5", df=True, n=1470)),
        "ipv6": (P1, VXLAN, eth(b"\x33\x33\0\0\0\x02", POD1, bytes([0x60]) + bytes(39), 0x86DD)),
        "vlan": (P1, VXLAN, eth(GW1, POD1, b"\0\x05\x08\0" + ipv4("10.244.1.2", "10.244.2.5", 1, icmp_echo()), 0x8100)),
    }
    for b, name in ((VXLAN, "vxlan"), (UDP, "udp"), (IPIP, "ipip"), (HOSTGW, "hostgw"), (DIRECT, "direct")):
        seeds["to-peer-" + name] = (P1, b, pod_ping(POD1, GW1, "10.244.1.2", "10.244.2.5"))
        seeds["to-far-peer-" + name] = (P2 | TRACE, b, pod_udp(POD2, GW1, "10.244.1.3", "10.244.3.5"))
    # host-gw: a peer's pod packet arrives as it is, from node2's MAC.
    seeds["from-hostgw-peer"] = (UNDER, HOSTGW, pod_ping(NODE2_MAC, NODE1_MAC, "10.244.2.5", "10.244.1.2"))
    # Calico: proxy ARP for 169.254.1.1, pods .65 and .66.
    seeds["calico-arp"] = (P1, IPIP | PROXY, arp(1, POD1, "10.244.1.65", b"\0" * 6, "169.254.1.1"))
    seeds["calico-to-peer"] = (P1, IPIP | PROXY, pod_ping(POD1, PROXY_MAC, "10.244.1.65", "10.244.2.70"))
    calico_inner = ipv4("10.244.2.70", "10.244.1.65", 1, icmp_echo())
    seeds["calico-ipip-in"] = (UNDER, IPIP | PROXY, eth(NODE1_MAC, NODE2_MAC, ipv4("192.168.100.2", "192.168.100.1", 4, calico_inner)))
    # flannel udp: IP-in-UDP on 8285.
    inner = ipv4("10.244.2.5", "10.244.1.2", 1, icmp_echo())
    seeds["udp-in"] = (UNDER, UDP, eth(NODE1_MAC, NODE2_MAC, ipv4("192.168.100.2", "192.168.100.1", 17, udp("192.168.100.2", "192.168.100.1", 8285, 8285, inner, checksum=False))))
    # A pod's TSO super-frame, as AF_PACKET receives it with its header.
    payload = bytes((i * 7) & 0xFF for i in range(3000))
    for b, name, dst, dmac in ((VXLAN, "tso-to-peer", "10.244.2.5", GW1), (HOSTGW, "tso-hostgw", "10.244.2.5", GW1), (VXLAN, "tso-to-pod", "10.244.1.3", GW1)):
        seg = tcp("10.244.1.2", dst, 1000000, payload, partial=True)
        frame = eth(dmac, POD1, ipv4("10.244.1.2", dst, 6, seg, df=True))
        seeds[name] = (P1, b | VNET, vnet(1, 1, 54, 1398, 34, 16) + frame)
    # A partial checksum whose field is in the Ethernet padding (the
    # regression test a_partial_checksum_in_the_padding_is_dropped_not_handed_on).
    padded = pod_udp(POD1, GW1, "10.244.1.2", "10.244.1.3", n=6) + bytes(20)
    seeds["partial-csum-in-padding"] = (P1, VXLAN | VNET, vnet(1, 0, 0, 0, 34, 30) + padded)
    for name, (port, node, frame) in seeds.items():
        write("pipeline", name, bytes([port, node]) + frame)


def offload_seeds():
    payload = bytes((i * 7) & 0xFF for i in range(3000))
    seg = tcp("10.244.1.2", "10.244.2.2", 1000000, payload, flags=0x18, partial=True)
    frame = eth(GW1, POD1, ipv4("10.244.1.2", "10.244.2.2", 6, seg, df=True))
    write("offload", "tso", b"\0" + vnet(1, 1, 54, 1398, 34, 16) + frame)
    write("offload", "tso-ecn", b"\0" + vnet(1, 0x81, 54, 1000, 34, 16) + frame)
    write("offload", "partial-only", b"\0" + vnet(1, 0, 0, 0, 34, 16) + frame)
    u = udp("10.244.1.2", "10.244.2.2", 40000, 5201, payload[:2000])
    u = u[:6] + struct.pack("!H", fold(pseudo("10.244.1.2", "10.244.2.2", 17, len(u)))) + u[8:]
    uframe = eth(GW1, POD1, ipv4("10.244.1.2", "10.244.2.2", 17, u))
    write("offload", "udp-gso", b"\0" + vnet(1, 5, 42, 1200, 34, 6) + uframe)
    # A kernel node's whole GSO datagram after decapsulation (valid sum).
    full = eth(GW1, POD1, ipv4("10.244.2.2", "10.244.1.2", 6, tcp("10.244.2.2", "10.244.1.2", 5, payload)))
    write("offload", "recognise-gso", b"\1" + struct.pack("!HB", 1450, 14) + full)
    small = eth(GW1, POD1, ipv4("10.244.2.2", "10.244.1.2", 6, tcp("10.244.2.2", "10.244.1.2", 5, payload[:100], partial=True)))
    write("offload", "recognise-partial", b"\1" + struct.pack("!HB", 1450, 14) + small)
    # UDP GRO burst: VXLAN datagrams (8-byte header, inner Ethernet) of
    # one TCP flow, in order.
    mss = 1000
    datagrams = b""
    for k in range(3):
        data = payload[k * mss:(k + 1) * mss]
        t = tcp("10.244.2.2", "10.244.1.2", 5 + k * mss, data, flags=0x10 | (0x08 if k == 2 else 0))
        inner = eth(VTEP1, NODE2_VTEP, ipv4("10.244.2.2", "10.244.1.2", 6, t, ident=100 + k))
        datagrams += b"\x08\0\0\0\0\0\x01\0" + inner
    write("offload", "gro-vxlan", b"\2" + struct.pack("!HB", 8 + 14 + 40 + mss, 22) + datagrams)
    write("offload", "complete-partial-l4", b"\3\x0e" + small[0:14] + small[14:])


def control_seeds():
    doc = open(os.path.join(ROOT, "docs/control-protocol.md")).read()
    lines = [m.group(1) for m in re.finditer(r"^> (\{.*\})$", doc, re.M)]
    for i, line in enumerate(lines):
        write("control_request", "doc-%02d" % i, (line + "\n").encode())
    session = [
        '{"v":1,"request":"port-add","interface":"veth1","ip":"10.244.1.2","mac":"0a:58:0a:f4:01:02","container_id":"c0ffee","ifname":"eth0"}',
        '{"v":1,"request":"peer-add","name":"node2","underlay_ip":"192.168.100.2","pod_cidr":"10.244.2.0/24","vtep_mac":"d6:8a:5e:47:3c:02"}',
        '{"v":1,"request":"peer-add","name":"node3","underlay_ip":"192.168.100.3","pod_cidr":"10.244.3.0/24","vtep_mac":"d6:8a:5e:47:3c:03","backend":"host-gw"}',
        '{"v":1,"request":"route-add","prefix":"10.244.9.0/24","next_hop":{"peer":"node2"}}',
        '{"v":1,"request":"route-add","prefix":"10.244.1.9/32","next_hop":{"local":"veth1"}}',
        '{"v":1,"request":"trace","in_port":"veth1","frame":{"dst_ip":"10.244.2.5"}}',
        '{"v":1,"request":"trace","in_port":"veth1","frame":{"dst_ip":"10.244.2.5","protocol":"tcp","payload_len":5000,"gso_size":1398}}',
        '{"v":1,"request":"trace","in_port":"eth0","hex":"0200c0a864010200c0a864020800450000860001000040113112c0a86402c0a86401c822211800720000080000000000010042886a88a93fd68a5e473c020800450000541c4640003f0106780af402020af401020800f3bc0d2f0001000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"}',
        '{"v":1,"request":"route-list"}',
        '{"v":1,"request":"peer-list"}',
        '{"v":1,"request":"stats"}',
        '{"v":1,"request":"peer-del","name":"node2"}',
        '{"v":1,"request":"port-del","interface":"veth1"}',
        '{"v":1,"request":"status"}',
    ]
    write("control_request", "session", ("\n".join(session) + "\n").encode())


def cni_seeds():
    base = {
        "cniVersion": "1.1.0", "name": "podnet", "type": "podswitch",
        "socket": "/run/podswitch/podswitchd.sock", "mtu": 1450, "gatewayMode": "bridge",
        "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/networks",
                 "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
    }
    write("cni_config", "bridge-1.1.0", json.dumps(base).encode())
    for version in ("0.3.1", "0.4.0", "1.0.0"):
        write("cni_config", "bridge-" + version, json.dumps(dict(base, cniVersion=version)).encode())
    write("cni_config", "proxy-arp", json.dumps(dict(base, gatewayMode="proxy-arp", mtu=1480)).encode())
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "psw0123456789a", "mac": "0a:58:0a:f4:01:09"},
                       {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/var/run/netns/pod"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {},
    }
    write("cni_config", "check-prev-result", json.dumps(dict(base, prevResult=prev)).encode())
    no_gw = dict(prev, ips=[{"address": "10.244.1.5/24", "version": "4"}])
    write("cni_config", "check-prev-result-0.4.0", json.dumps(dict(base, cniVersion="0.4.0", prevResult=no_gw)).encode())
    gc = dict(base, **{"cni.dev/valid-attachments": [{"containerID": "c0ffee", "ifname": "eth0"}]})
    write("cni_config", "gc", json.dumps(gc).encode())


pipeline_seeds()
offload_seeds()
control_seeds()
cni_seeds()
