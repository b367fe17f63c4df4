#!/usr/bin/python3
"""The kv module driven by a memcached client nobody here wrote (pymemcache).

usage: pymemcache_check.py POOLSRV_BIN KV_MODULE [DISPATCH [sanitized]]

Starts poolsrv with the kv module on a free loopback port, then checks with
pymemcache every storage, retrieval and other command (binary values, many
keys, noreply, cas conflicts, expiry), memcached's error replies on a raw
socket (each leaving the connection and every other client served), and the
memory bound under a set-only flood of ten times memory_mb (the store's
bytes always; the process's RSS too, unless "sanitized": a sanitizer's
shadow memory grows with the heap). Exit 0 when all
hold, 1 saying what does not, 77 (skip) without pymemcache unless
POOLSRV_REQUIRE_TOOLS is set. Every wait is bounded.
"""
import os
import re
import socket
import subprocess
import sys
import time

try:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheClientError
except ImportError:
    if os.environ.get("POOLSRV_REQUIRE_TOOLS"):
        print("pymemcache is missing (Debian package python3-pymemcache)")
        sys.exit(1)
    print("skipped: pymemcache is missing (Debian package python3-pymemcache)")
    sys.exit(77)

MEMORY_MB = 4
# What the README asks of a kv server's configuration: get lines as long
# as a value (memcached takes any length).
MAX_LINE = 1048576
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def start(binary, module, dispatch):
    log = open("/tmp/pymemcache_check.%d.log" % os.getpid(), "w+")
    p = subprocess.Popen([binary, "-o", "server.port=0", "-o", "admin.port=0",
                          "-o", "server.dispatch=" + dispatch, "-o", "log.level=warn",
                          "-o", "limits.max_line=%d" % MAX_LINE,
                          "-o", "handler.module=" + module,
                          "-o", "handler.memory_mb=%d" % MEMORY_MB],
                         stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
        if m:
            return p, int(m.group(1)), log
        if p.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    print("poolsrv did not start:", log.read())
    p.kill()
    sys.exit(1)


def raw(port, data, want_lines=1, timeout=5):
    """Sends bytes on a fresh connection; returns the reply lines read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        f = s.makefile("rb")
        return [f.readline() for _ in range(want_lines)]


def commands(c, port):
    # Storage commands, as memcached answers them.
    check(c.set("k1", b"v1", noreply=False) is True, "set")
    check(c.get("k1") == b"v1", "get after set")
    check(c.add("k1", b"x", noreply=False) is False, "add of a present key: NOT_STORED")
    check(c.add("k2", b"v2", noreply=False) is True, "add of an absent key")
    check(c.replace("absent", b"x", noreply=False) is False, "replace of an absent key")
    check(c.replace("k2", b"v2b", noreply=False) is True, "replace")
    check(c.append("k1", b"+tail", noreply=False) is True, "append")
    check(c.prepend("k1", b"head+", noreply=False) is True, "prepend")
    check(c.get("k1") == b"head+v1+tail", "append/prepend result")
    check(c.append("absent", b"x", noreply=False) is False, "append to an absent key")
    # flags travel with the value
    c.set("flagged", b"x", flags=12345, noreply=False)
    v, cas = c.gets("flagged")
    check(v == b"x" and cas is not None, "gets")
    r = raw(port, b"get flagged\r\n", 3)
    check(r[0] == b"VALUE flagged 12345 1\r\n" and r[2] == b"END\r\n", "flags in VALUE: %r" % r)
    # cas: a conflict after an intervening set
    v, cas = c.gets("k2")
    check(c.cas("k2", b"mine", cas, noreply=False) is True, "cas with the current unique")
    check(c.cas("k2", b"stale", cas, noreply=False) is False, "cas with a stale unique: EXISTS")
    check(c.cas("nothere", b"x", 1, noreply=False) is None, "cas of an absent key: NOT_FOUND")
    # binary values: every byte value, CR LF and NUL inside, 500 KB
    blob = bytes(range(256)) * 2000
    check(c.set("blob", blob, noreply=False) is True, "set binary")
    check(c.get("blob") == blob, "binary value back whole")
    # many keys in one get
    many = {"m%03d" % i: ("value %d" % i).encode() for i in range(200)}
    check(c.set_many(many, noreply=False) == [], "set_many")
    got = c.get_many(list(many) + ["missing1", "missing2"])
    check(got == many, "get_many of 200 keys (%d back)" % len(got))
    # noreply: nothing comes back, the next reply is not out of step
    c.set("quiet", b"1", noreply=True)
    c.delete("k2", noreply=True)
    check(c.get("quiet") == b"1" and c.get("k2") is None, "noreply set/delete")
    # incr/decr
    check(c.incr("counter", 1) is None, "incr of an absent key: NOT_FOUND")
    c.set("counter", b"99", noreply=False)
    check(c.incr("counter", 1) == 100, "incr 99 -> 100")
    check(c.decr("counter", 1000) == 0, "decr stops at 0")
    c.set("counter", b"18446744073709551615", noreply=False)
    check(c.incr("counter", 1) == 0, "incr wraps at 2^64")
    c.set("text", b"abc", noreply=False)
    try:
        c.incr("text", 1)
        check(False, "incr of a non-numeric value must fail")
    except MemcacheClientError as e:
        check("non-numeric" in str(e), "incr non-numeric: %s" % e)
    # delete, touch
    check(c.delete("k1", noreply=False) is True, "delete")
    check(c.delete("k1", noreply=False) is False, "delete of an absent key")
    check(c.touch("blob", 100, noreply=False) is True, "touch")
    check(c.touch("absent", 100, noreply=False) is False, "touch of an absent key")
    # expiry: negative = already expired; absolute time in the past; 2 s
    c.set("neg", b"x", expire=-1, noreply=False)
    check(c.get("neg") is None, "negative exptime: expired at once")
    c.set("past", b"x", expire=int(time.time()) - 3 * 86400 * 30, noreply=False)
    check(c.get("past") is None, "absolute exptime in the past")
    # Expiry counts whole seconds of the clock, as memcached's does: an
    # item set with exptime N lives between N - 1 and N seconds, so only
    # N >= 2 is sure to be there when read at once.
    c.set("short", b"x", expire=2, noreply=False)
    check(c.get("short") == b"x", "2 s item there at first")
    deadline = time.time() + 5
    while c.get("short") is not None and time.time() < deadline:
        time.sleep(0.1)
    check(c.get("short") is None, "2 s item gone within 5 s")
    # version, verbosity, stats, flush_all
    check(c.version() == b"1.6.18", "version: memcached's major.minor.patch (%r)" % c.version())
    check(raw(port, b"verbosity 1\r\n") == [b"OK\r\n"], "verbosity")
    st = c.stats()
    for name in (b"curr_items", b"get_hits", b"get_misses", b"cmd_get", b"cmd_set",
                 b"evictions", b"limit_maxbytes", b"bytes"):
        check(name in st, "stats has %s" % name.decode())
    check(st.get(b"limit_maxbytes") == MEMORY_MB * 1024 * 1024, "limit_maxbytes")
    check(c.flush_all(noreply=False) is True, "flush_all")
    check(c.get("blob") is None and c.get("m001") is None, "flush_all empties")


def errors(port, c):
    # Each wrong input gets memcached's reply, and the same connection
    # (and everyone else) goes on.
    cases = [
        (b"\r\n", b"ERROR\r\n", "a line with no command"),
        (b"bogus command\r\n", b"ERROR\r\n", "an unknown command"),
        (b"get " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n",
         "a key of 251 bytes"),
        (b"set k 0 0 2147483648\r\n", b"CLIENT_ERROR bad command line format\r\n",
         "a 2 GB bytes field"),
        (b"set k 0 0 5\r\nabc\r\n", None, "a block shorter than announced"),
        (b"set k 0 0 3\r\nabcdef\r\n", b"CLIENT_ERROR bad data chunk\r\n",
         "a block longer than announced"),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        for data, want, what in cases:
            s.sendall(data)
            if want is None:
                # the block is 5 + 2 bytes: "abc\r\n" and two more, not CRLF
                s.sendall(b"xx")
                line = f.readline()
                check(line == b"CLIENT_ERROR bad data chunk\r\n", "%s: %r" % (what, line))
            else:
                line = f.readline()
                check(line == want, "%s: %r" % (what, line))
            if what == "a block longer than announced":
                # the bytes past the block ("f") are read as a command line
                line = f.readline()
                check(line == b"ERROR\r\n", "the rest of a long block: %r" % line)
            s.sendall(b"set ok 0 0 2\r\nok\r\n")
            check(f.readline() == b"STORED\r\n", "after %s the connection still works" % what)
    check(c.get("ok") == b"ok", "another client is served")
    # The largest bytes memcached takes, 2147483645: too large for the
    # store, answered so, and the next 2147483647 bytes are discarded, as
    # memcached discards them ("version" is part of the block). memcached
    # sends the same reply once the block has passed; kv at once.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(b"set k 0 0 2147483645\r\n")
        check(f.readline() == b"SERVER_ERROR object too large for cache\r\n",
              "set of 2147483645 bytes")
        s.sendall(b"version\r\n")
        s.settimeout(0.5)
        try:
            r = s.recv(100)
        except socket.timeout:
            r = None
        check(r is None, "a 2147483645-byte block is discarded, not read as commands: %r" % r)
    # A value larger than item_size_max: SERVER_ERROR, its bytes discarded.
    big = 2 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(b"set big 0 0 %d\r\n" % big + b"\n" * big + b"\r\nget ok\r\n")
        check(f.readline() == b"SERVER_ERROR object too large for cache\r\n", "too large")
        check(f.readline() == b"VALUE ok 0 2\r\n", "after a too large value: next command")


def exptimes(port):
    # memcached 1.6.18 keeps an exptime's low 32 bits as a signed number:
    # 99999999999 is an absolute time in 2008 and 2^63-1 is -1 (both gone at
    # once), 2^32+100 is 100 seconds. Recorded from memcached, as these
    # replies.
    cases = [
        (b"99999999999", b"END\r\n"),
        (b"9223372036854775807", b"END\r\n"),
        (b"4294967396", b"VALUE e 0 1\r\n"),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        for exptime, want in cases:
            s.sendall(b"set e 0 " + exptime + b" 1\r\nx\r\nget e\r\n")
            check(f.readline() == b"STORED\r\n", "set with exptime %s" % exptime.decode())
            line = f.readline()
            check(line == want, "exptime %s: get %r, memcached %r" % (exptime.decode(), line, want))
            while line != b"END\r\n":
                line = f.readline()
        s.sendall(b"set t 0 0 1\r\nx\r\ntouch t 99999999999\r\nget t\r\n")
        r = [f.readline() for _ in range(3)]
        check(r == [b"STORED\r\n", b"TOUCHED\r\n", b"END\r\n"], "touch 99999999999: %r" % r)
        # flush_all reads its delay the same way: 99999999999 is a time in
        # 2008, before the server started, which memcached takes as no flush
        # at all; 2^31 is negative: everything goes now.
        s.sendall(b"set f 0 0 1\r\nx\r\nflush_all 99999999999\r\nget f\r\n")
        r = [f.readline() for _ in range(3)]
        check(r == [b"STORED\r\n", b"OK\r\n", b"VALUE f 0 1\r\n"],
              "flush_all 99999999999 flushes nothing: %r" % r)
        f.readline(), f.readline()
        s.sendall(b"flush_all 2147483648\r\nget f\r\n")
        r = [f.readline() for _ in range(2)]
        check(r == [b"OK\r\n", b"END\r\n"], "flush_all 2147483648 flushes now: %r" % r)


def first_byte(port):
    # memcached tells the binary protocol by a connection's first byte
    # (0x80). kv does not serve it: a binary request is answered, in the
    # binary protocol, status 0x0083 "Not supported" with its opcode and
    # opaque, and the connection closed (before: no reply at all, the
    # header having no line ending to wait for).
    header = bytes([0x80, 0x00, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 3]) + b"\xde\xad\xbe\xef" + bytes(8)
    want = (bytes([0x81, 0x00, 0, 0, 0, 0, 0x00, 0x83, 0, 0, 0, 13]) + b"\xde\xad\xbe\xef" +
            bytes(8) + b"Not supported")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(header + b"foo")
        got = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        except socket.timeout:
            got += b" (no close within 5 s)"
        check(got == want, "binary get: %r" % got)
    # Any other first byte begins the first text line, however it arrives.
    for chunks, want in [
        ([b"g", b"et k1\r\nversion\r\n"], b"END\r\n"),
        ([b"s", b"et one 0 0 1\r\n1\r\nversion\r\n"], b"STORED\r\n"),
        ([b"\r", b"\nversion\r\n"], b"ERROR\r\n"),
        ([b"\n", b"version\r\n"], b"ERROR\r\n"),
        ([b" ", b"get k1\r\nversion\r\n"], b"END\r\n"),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            f = s.makefile("rb")
            for c in chunks:
                s.sendall(c)
                time.sleep(0.02)
            r = [f.readline(), f.readline()]
            check(r[0].startswith(want) and r[-1].startswith(b"VERSION "),
                  "first line sent as %r: %r" % (chunks, r))


def long_gets(binary, module, port, c):
    # memcached answers a get line of any length; kv answers one up to
    # limits.max_line (8192 by default, closing the connection past it):
    # the README asks for 1 MiB, and kv warns at start when it is less.
    keys = [b"k%04d" % i for i in range(1500)]
    line = b"get " + b" ".join(keys) + b"\r\n"  # 9,005 bytes: past the default 8192
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(b"set k0007 0 0 1\r\n7\r\n" + line + b"version\r\n")
        r = [f.readline() for _ in range(5)]
        check(r[:4] == [b"STORED\r\n", b"VALUE k0007 0 1\r\n", b"7\r\n", b"END\r\n"] and
              r[4].startswith(b"VERSION "), "a %d-byte get line: %r" % (len(line), r))
    many = ["%0250d" % i for i in range(3000)]  # a get line of 753,004 bytes
    c.set(many[-1], b"last", noreply=False)
    try:
        got = c.get_many(many)
    except Exception as e:  # the connection closed under it
        got = {"error": e}
    check(got == {many[-1]: b"last"}, "get_many of 3000 250-byte keys: %r" % list(got)[:1])
    # past max_line the connection is still closed, its memory bounded
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(b"get " + b"k " * (MAX_LINE // 2) + b"\r\n")
        check(f.readline() == b"ERROR line too long\r\n", "a get line past max_line")
    for max_line, warned in ((8192, True), (MAX_LINE, False)):
        t = subprocess.run([binary, "-t", "-o", "handler.module=" + module,
                            "-o", "limits.max_line=%d" % max_line],
                           capture_output=True, text=True, timeout=20)
        check(t.returncode == 0 and ("kv: limits.max_line" in t.stderr) == warned,
              "poolsrv -t with max_line %d: %r" % (max_line, t.stderr))


def memory(c, pid, sanitized):
    def rss_kb():
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1
    before = rss_kb()
    value = b"x" * 4000
    total = 0
    i = 0
    limit = MEMORY_MB * 1024 * 1024
    worst = 0
    while total < 10 * limit:
        c.set("flood%06d" % i, value, noreply=True)
        total += len(value)
        i += 1
        if i % 1000 == 0:
            st = c.stats()
            worst = max(worst, st[b"bytes"])
    st = c.stats()
    worst = max(worst, st[b"bytes"])
    after = rss_kb()
    print("flood: %d sets, %d MB sent; stats bytes at most %d (limit %d); evictions %d; "
          "RSS %d -> %d kB" % (i, total >> 20, worst, limit, st[b"evictions"], before, after))
    check(worst <= limit, "bytes stay within memory_mb")
    check(st[b"evictions"] > 0, "evictions counted")
    if not sanitized:
        check(after - before < 3 * MEMORY_MB * 1024 + 8192, "RSS grew %d kB" % (after - before))
    check(c.get("flood%06d" % (i - 1)) == value, "the newest item is there")


def libmemcached_tools(port):
    """libmemcached's own tools parse the version: they must accept kv."""
    tools = ["/usr/bin/memcping", "/usr/bin/memcstat"]
    if not all(os.path.exists(t) for t in tools):
        what = "libmemcached's memcping/memcstat are missing (Debian package libmemcached-tools)"
        check(not os.environ.get("POOLSRV_REQUIRE_TOOLS"), what)
        print("skipped:", what)
        return
    server = "--servers=127.0.0.1:%d" % port
    r = subprocess.run([tools[0], server], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, "memcping accepts kv (%d: %s)" % (r.returncode, r.stderr.strip()))
    r = subprocess.run([tools[1], server], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0 and "version: 1.6.18" in r.stdout and "Failed" not in r.stdout + r.stderr,
          "memcstat reads kv's stats (%d: %s)" % (r.returncode, (r.stdout + r.stderr)[:300]))


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    dispatch = sys.argv[3] if len(sys.argv) > 3 else "event"
    p, port, log = start(sys.argv[1], sys.argv[2], dispatch)
    try:
        c = Client(("127.0.0.1", port), timeout=10, connect_timeout=5)
        commands(c, port)
        libmemcached_tools(port)
        errors(port, c)
        exptimes(port)
        first_byte(port)
        long_gets(sys.argv[1], sys.argv[2], port, c)
        memory(c, p.pid, len(sys.argv) > 4 and sys.argv[4] == "sanitized")
        c.close()
    finally:
        p.terminate()
        try:
            code = p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            code = -9
        log.seek(0)
        text = log.read()
        check(code == 0, "poolsrv exit status %d" % code)
        check("Sanitizer" not in text and "runtime error" not in text,
              "sanitizer report in the log")
        if failures:
            print(text[-4000:])
    print("%s: %d failure(s)" % (dispatch, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
