#!/usr/bin/python3
"""What one client can make the server hold: hostile clients against a real
poolsrv, with the process's memory measured.

usage: check.py POOLSRV_BIN KV_MODULE CHAT_MODULE DISPATCH [sanitized]

- kv, a 1 KB line asking for 500 MB: `set a` with a 1,000,000-byte value,
  then `get a a ... a` (500 keys) from a client that does not read for 2 s.
  The reply goes by reference: RSS must stay within BOUND_MB, the whole
  reply must then arrive intact, and the idle connection must hold nothing.
- kv, four idle connections after a 200-key get of 1 MB values each.
- kv, limits.max_output: a reply of copies past it closes the connection
  with nothing of the reply written (never a reply cut short), counted in
  output_overflows; other clients are served.
- chat, a member that never reads (SO_RCVBUF 4096) while another sends 8 KB
  lines as fast as it can for 3 s: RSS must stay within BOUND_MB, and the
  refused sends are counted in sends_refused.

Exit 0 when all hold, 1 saying what does not. Loopback only; every wait is
bounded.
"""
import os
import re
import socket
import subprocess
import sys
import time

BOUND_MB = 48  # the old code grew by 500 MB to 1.4 GB in these cases
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from poolsrv_proc import Server as Proc, check, failures  # noqa: E402


def Server(binary, dispatch, module, *overrides):
    return Proc(binary, ["server.dispatch=" + dispatch, "log.level=warn",
                         "handler.module=" + module] + list(overrides))


def connect(port, rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def read_exact(s, n, deadline):
    buf = bytearray()
    while len(buf) < n and time.time() < deadline:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def kv_set(s, key, value):
    s.sendall(b"set %s 0 0 %d\r\n" % (key, len(value)) + value + b"\r\n")
    return read_exact(s, 8, time.time() + 10) == b"STORED\r\n"


def kv_amplify(binary, kv, dispatch):
    srv = Server(binary, dispatch, kv)
    value = bytes((i * 7) & 0xFF for i in range(1000000))
    c = connect(srv.port)
    check(kv_set(c, b"a", value), "set a 1,000,000-byte value")
    base = srv.rss_mb()
    slow = connect(srv.port, 4096)
    line = b"get" + b" a" * 500 + b"\r\n"
    slow.sendall(line)
    time.sleep(2)  # not reading: what does the server hold meanwhile?
    held = srv.rss_mb() - base
    check(held < BOUND_MB, "a %d-byte get of 500 x 1 MB, unread 2 s: RSS +%.1f MB (bound %d)"
          % (len(line), held, BOUND_MB))
    block = b"VALUE a 0 1000000\r\n" + value + b"\r\n"
    got = read_exact(slow, 500 * len(block) + 5, time.time() + 60)
    check(got == block * 500 + b"END\r\n", "the 500 MB reply arrived whole (%d bytes)" % len(got))
    time.sleep(0.3)
    idle = srv.rss_mb() - base
    check(idle < BOUND_MB, "the idle connection after it: RSS +%.1f MB" % idle)
    # Four idle connections after a 200-key get each.
    conns = []
    for _ in range(4):
        s = connect(srv.port)
        s.sendall(b"get" + b" a" * 200 + b"\r\n")
        got = read_exact(s, 200 * len(block) + 5, time.time() + 60)
        check(got == block * 200 + b"END\r\n", "a 200-key get arrived whole")
        conns.append(s)
    time.sleep(0.3)
    four = srv.rss_mb() - base
    check(four < BOUND_MB, "four idle connections after a 200-key get each: RSS +%.1f MB" % four)
    c.sendall(b"version\r\n")
    check(read_exact(c, 8, time.time() + 5) == b"VERSION ", "the first client still served")
    for s in conns + [c, slow]:
        s.close()
    print("kv amplification (%s): unread +%.1f MB, idle +%.1f MB, four idle +%.1f MB"
          % (dispatch, held, idle, four))
    srv.stop()


def kv_max_output(binary, kv, dispatch):
    srv = Server(binary, dispatch, kv, "limits.max_output=65536")
    c = connect(srv.port)
    small = b"x" * 1000  # under kv's hold size: copied into the reply
    for i in range(100):
        if not kv_set(c, b"k%d" % i, small):
            check(False, "set k%d" % i)
    c.sendall(b"get" + b"".join(b" k%d" % i for i in range(100)) + b"\r\n")
    got = read_exact(c, 200000, time.time() + 10)
    check(got == b"", "a reply of 100 KB of copies past max_output 64 KiB: closed with "
          "nothing of it written (got %d bytes)" % len(got))
    check(srv.stat("output_overflows") == 1, "counted in output_overflows")
    d = connect(srv.port)
    d.sendall(b"get k1\r\n")
    want = b"VALUE k1 0 1000\r\n" + small + b"\r\nEND\r\n"
    check(read_exact(d, len(want), time.time() + 5) == want, "another client is served")
    c.close()
    d.close()
    srv.stop()


def chat_slow_member(binary, chat, dispatch):
    srv = Server(binary, dispatch, chat)
    deaf = connect(srv.port, 4096)  # never reads
    talker = connect(srv.port)
    talker.setblocking(False)
    time.sleep(0.2)
    base = srv.rss_mb()
    line = b"y" * 8191 + b"\n"
    sent = 0
    off = 0  # into line: a send may take part of it
    worst = 0.0
    end = time.time() + 3
    while time.time() < end:
        try:
            n = talker.send(line[off:])
            sent += n
            off = (off + n) % len(line)
        except BlockingIOError:
            time.sleep(0.001)
        try:
            while talker.recv(65536):  # the talker reads what comes back
                pass
        except BlockingIOError:
            pass
        worst = max(worst, srv.rss_mb() - base) if sent % 64 == 0 else worst
    worst = max(worst, srv.rss_mb() - base)
    check(worst < BOUND_MB, "a chat member not reading while another sent %d MB in 3 s: "
          "RSS +%.1f MB (bound %d)" % (sent >> 20, worst, BOUND_MB))
    check(srv.stat("sends_refused") > 0, "the refused sends are counted (sends_refused %d)"
          % srv.stat("sends_refused"))
    print("chat slow member (%s): %d MB sent, RSS +%.1f MB" % (dispatch, sent >> 20, worst))
    deaf.close()
    talker.close()
    srv.stop()


def main():
    if len(sys.argv) < 5:
        print(__doc__)
        return 2
    binary, kv, chat, dispatch = sys.argv[1:5]
    kv_amplify(binary, kv, dispatch)
    kv_max_output(binary, kv, dispatch)
    chat_slow_member(binary, chat, dispatch)
    if failures:
        print("%d failed" % len(failures))
        return 1
    print("all held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
