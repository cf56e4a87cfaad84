#!/usr/bin/env python3
# Xen 4.17's C xenstored's answer to a guest filling its `memory` quota, for comparison with
# ours (tests/memory_quota.rs). A guest ring client for C xenstored under the peers' LD_PRELOAD
# stub (tests/xsbench/peers/xsshim.c maps domain N's ring to <dir>/shim/ring-N and takes event
# channel kicks as port numbers on <dir>/shim/evtchn.fifo): introduces domain 5, sets the global
# memory quota to QUOTA, writes 500-byte nodes as the guest until refused and prints the error,
# then a delete, a rewrite, C's quota report, a grown and a shrunk node and the nodes quota.
# Requests stay below the 1024-byte ring (no wrap-around flow control here).
#   DIR=$(mktemp -d); XSSHIM_LOG=1 tests/xsbench/peers/c-xenstored.sh start "$DIR"
#   python3 c_memory_quota.py "$DIR" 20000; tests/xsbench/peers/c-xenstored.sh stop "$DIR"
# Measured (2026-12-07): write 35: ERROR EIO; memory 19686 for 37 nodes; grown node: ENOENT;
# nodes quota: ENOSPC.
import mmap, os, re, socket, struct, sys, time, subprocess
d = sys.argv[1]; sockp = f"{d}/run/socket"; shim = f"{d}/shim"
XS_CONTROL, XS_READ, XS_INTRODUCE, XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS, XS_ERROR = 0, 2, 8, 11, 12, 13, 14, 16
def pkt(t, rid, payload): return struct.pack("<IIII", t, rid, 0, len(payload)) + payload
s = socket.socket(socket.AF_UNIX); s.connect(sockp)
def call(t, payload):
    s.sendall(pkt(t, 1, payload)); h = s.recv(16); ty, _, _, n = struct.unpack("<IIII", h)
    b = b""
    while len(b) < n: b += s.recv(n - len(b))
    return ty, b
print(call(XS_MKDIR, b"/local/domain/5\0"))
print(call(XS_SET_PERMS, b"/local/domain/5\0n5\0"))
print(call(XS_INTRODUCE, b"5\x00123\x007\x00"))
print(call(XS_CONTROL, b"quota\0set\0memory\0" + sys.argv[2].encode() + b"\0"))
log = open(f"{d}/xenstored.log").read()
port = int(re.findall(r"bind_interdomain dom5 remote port7 -> local (\d+)", log)[-1])
fd = os.open(f"{shim}/ring-5", os.O_RDWR); m = mmap.mmap(fd, 4096)
fifo = os.open(f"{shim}/evtchn.fifo", os.O_WRONLY)
REQ, RSP, IDX = 0, 1024, 2048
def idx(i): return struct.unpack_from("<I", m, IDX + 4 * i)[0]
def setidx(i, v): struct.pack_into("<I", m, IDX + 4 * i, v)
rid = [100]
def gcall(t, payload):
    rid[0] += 1; b = pkt(t, rid[0], payload); prod = idx(1)
    for i, c in enumerate(b): m[REQ + (prod + i) % 1024] = c
    setidx(1, prod + len(b)); os.write(fifo, struct.pack("<I", port))
    out = b""; deadline = time.time() + 5
    while time.time() < deadline:
        cons, prod = idx(2), idx(3)
        if prod != cons:
            out += bytes(m[RSP + (j % 1024)] for j in range(cons, prod)); setidx(2, prod)
            if len(out) >= 16:
                n = struct.unpack_from("<I", out, 12)[0]
                if len(out) >= 16 + n:
                    ty = struct.unpack_from("<I", out, 0)[0]
                    return ("ERROR " if ty == XS_ERROR else "OK ") + out[16:16 + n].rstrip(b"\0").decode()
        time.sleep(0.001)
    return "timeout"
print("guest read home:", gcall(XS_READ, b"/local/domain/5\0"))
v = b"v" * 500
for i in range(100):
    r = gcall(XS_WRITE, f"/local/domain/5/data/n{i}\0".encode() + v)
    if r.startswith("ERROR"):
        print(f"write {i}: {r}"); break
print("rm after full:", gcall(XS_RM, b"/local/domain/5/data/n1\0"))
print("write again:", gcall(XS_WRITE, f"/local/domain/5/data/n{i}\0".encode() + v))
print(call(XS_CONTROL, b"quota\x005\0")[1].decode())
print("grow existing:", gcall(XS_WRITE, b"/local/domain/5/data/n0\0" + b"w" * 900))
print("shrink existing:", gcall(XS_WRITE, b"/local/domain/5/data/n0\0" + b"w"))
print("grow existing small:", gcall(XS_WRITE, b"/local/domain/5/data/n0\0" + b"w" * 400))
print(call(XS_CONTROL, b"quota\0set\0memory\0" + b"2621440\0"))
print(call(XS_CONTROL, b"quota\0set\0nodes\0" + b"38\0"))
print("nodes quota:", gcall(XS_WRITE, b"/local/domain/5/data/z1\0x"), gcall(XS_WRITE, b"/local/domain/5/data/z2\0x"))
