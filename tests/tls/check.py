#!/usr/bin/python3
"""TLS on the data listener, against a real poolsrv, with real clients
(Python's ssl module, and `openssl s_client` where it tells more).

usage: check.py POOLSRV_BIN DISPATCH

Certificates are made here with the `openssl` tool: a CA, a server
certificate for 127.0.0.1, a client certificate from the CA and one from
another CA. Checked, in the given dispatch mode:
- echo over TLS 1.2 and 1.3: the greeting after the handshake, 200
  pipelined lines in one write (split across records), a line written a
  byte at a time, `exit` closing with close_notify;
- a plaintext client on the TLS port: closed, never answered in the clear
  (nothing readable as a greeting or an echo), counted in tls_errors;
- a ClientHello of random bytes: closed, counted;
- a client that never starts its handshake: closed at handshake_timeout,
  counted in tls_timeouts, while other TLS clients are served meanwhile;
- verify_client = require: a client certificate from ca is let in, none or
  one from another CA is refused (TLS 1.3: at the client's first read);
- a PROXY v1 or v2 header, then the handshake (HAProxy's pass-through): the
  header's address is the client's;
- SIGHUP with the certificate renewed in place: new clients get it, a
  connected client keeps its session; then a broken file: a reload error
  naming it, and the running certificate stays;
- a key that does not match the certificate: poolsrv refuses to start,
  naming the file.

Exit 0 when all hold, 1 saying what does not, 77 (skip) without the openssl
tool unless POOLSRV_REQUIRE_TOOLS is set. Loopback only; every wait bounded.
"""
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from poolsrv_proc import Server as Proc, check, failures  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_certs(d):
    """A CA, a server cert for 127.0.0.1, a client cert, and one from another CA."""
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", ca + ".key", "-out", ca + ".crt", "-days", "2",
                "-subj", "/CN=poolsrv test " + ca, cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca, ext in (("server", "ca", True), ("renewed", "ca", True),
                          ("client", "ca", False), ("stranger", "other-ca", False)):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
        args = ["x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
                "-CAcreateserial", "-out", name + ".crt", "-days", "2"]
        if ext:
            args += ["-extfile", "san.ext"]
        openssl(*args, cwd=d)


def Server(binary, dispatch, d, *overrides, expect_start=True):
    """poolsrv speaking TLS with the test's server certificate."""
    return Proc(binary, ["server.dispatch=" + dispatch, "log.level=info", "tls.enabled=true",
                         "tls.cert=" + os.path.join(d, "server.crt"),
                         "tls.key=" + os.path.join(d, "server.key")] + list(overrides),
                log_dir=d, listening=r"listening on 127\.0\.0\.1:(\d+) \(TLS\)",
                expect_start=expect_start)


def client_ctx(d, version=None, cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(os.path.join(d, cert + ".crt"), os.path.join(d, cert + ".key"))
    return ctx


def tls_connect(port, ctx):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_lines(s, n):
    buf = b""
    deadline = time.time() + 10
    while buf.count(b"\n") < n and time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def echo(srv, d):
    for name, version in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
        s = tls_connect(srv.port, client_ctx(d, version))
        check(s.version() == "TLSv" + name, "TLS %s handshake (%s, %s)" % (name, s.version(),
                                                                        s.cipher()[0]))
        check(read_lines(s, 1) == b"Welcome to my server\r\n", "TLS %s greeting" % name)
        lines = b"".join(b"line %d %s\n" % (i, b"x" * (i * 37 % 300)) for i in range(200))
        s.sendall(lines)
        check(read_lines(s, 200) == lines, "TLS %s: 200 pipelined lines echoed in order" % name)
        for ch in b"one byte at a time\n":
            s.sendall(bytes([ch]))
        check(read_lines(s, 1) == b"one byte at a time\n", "TLS %s: a line a byte a write" % name)
        s.sendall(b"exit\n")
        got = b""
        try:
            got = s.recv(100)  # close_notify: a clean end of stream
        except ssl.SSLError as e:
            got = repr(e).encode()
        check(got == b"", "TLS %s: exit ends the stream cleanly (%r)" % (name, got))
        s.close()


def not_tls(srv):
    before = srv.stat("tls_errors")
    for what, data in (("a plaintext client", b"hello\r\nexit\r\n"),
                       ("a ClientHello of random bytes", b"\x16\x03\x01\x02\x00" + os.urandom(512))):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(data)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        check(b"hello" not in got and b"Welcome" not in got and b"ERROR" not in got,
              "%s: closed, never answered in the clear (%r)" % (what, got[:40]))
    deadline = time.time() + 5
    while srv.stat("tls_errors") < before + 2 and time.time() < deadline:
        time.sleep(0.05)
    check(srv.stat("tls_errors") >= before + 2, "both counted in tls_errors")


def silent(srv, d):
    """A client that never starts its handshake costs no worker: others are
    served meanwhile (event mode: with one worker); closed at the timeout."""
    quiet = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    began = time.time()
    s = tls_connect(srv.port, client_ctx(d))
    check(read_lines(s, 1) == b"Welcome to my server\r\n", "a TLS client served beside a silent one")
    s.close()
    quiet.settimeout(5)
    try:
        got = quiet.recv(100)
    except (ConnectionResetError, socket.timeout) as e:
        got = repr(e).encode()
    took = time.time() - began
    check(got == b"" and 0.8 < took < 3.5,
          "the silent client closed at handshake_timeout 1 s (%r after %.2f s)" % (got, took))
    check(srv.stat("tls_timeouts") == 1, "counted in tls_timeouts (%d)" % srv.stat("tls_timeouts"))
    quiet.close()


def client_certs(binary, dispatch, d):
    srv = Server(binary, dispatch, d, "tls.ca=" + os.path.join(d, "ca.crt"),
                 "tls.verify_client=require")
    s = tls_connect(srv.port, client_ctx(d, cert="client"))
    check(read_lines(s, 1) == b"Welcome to my server\r\n", "a client certificate from ca: let in")
    conns = srv.admin_command(b"stats conns\r\n")
    check(re.search(rb"CONN \d+ 127\.0\.0\.1:\d+ .* tls=TLSv1\.3 peer=client\r\n", conns) is not None,
          "stats conns shows the TLS version and the verified identity (%r)" % conns[:200])
    s.close()
    for who, cert in (("no client certificate", None), ("a certificate of another CA", "stranger")):
        refused = False
        try:
            s = tls_connect(srv.port, client_ctx(d, ssl.TLSVersion.TLSv1_3, cert=cert))
            got = read_lines(s, 1)  # TLS 1.3: the refusal comes at the first read
            refused = got == b""
            s.close()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            refused = True
        check(refused, "%s: refused" % who)
    # The client may see the refusal before the server has counted it.
    deadline = time.time() + 5
    while srv.stat("tls_errors") < 2 and time.time() < deadline:
        time.sleep(0.05)
    check(srv.stat("tls_errors") >= 2, "refusals counted in tls_errors")
    srv.stop()


def proxy_then_tls(binary, dispatch, d):
    """HAProxy's TCP pass-through: a PROXY header, then the ClientHello; the
    header's address is the client's, the handshake timer starts after it."""
    srv = Server(binary, dispatch, d, "server.proxy_protocol=any", "log.level=debug")
    for header in (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 9050\r\n",
                   b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([192, 0, 2, 8, 127, 0, 0, 1])
                   + (40001).to_bytes(2, "big") + (9050).to_bytes(2, "big")):
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        raw.sendall(header)
        s = client_ctx(d).wrap_socket(raw, server_hostname="127.0.0.1")
        check(read_lines(s, 1) == b"Welcome to my server\r\n",
              "PROXY %s then TLS: served" % ("v1" if header.startswith(b"PROXY") else "v2"))
        s.sendall(b"through\n")
        check(read_lines(s, 1) == b"through\n", "... and echoed")
        s.close()
    deadline = time.time() + 5
    while ("192.0.2.8:40001" not in srv.text()) and time.time() < deadline:
        time.sleep(0.05)
    text = srv.text()
    check("192.0.2.7:40000" in text and "192.0.2.8:40001" in text,
          "the headers' addresses are the clients' in the log")
    srv.stop()


def peer_cn(s):
    return dict(x[0] for x in s.getpeercert()["subject"]).get("commonName")


def reload_certs(binary, dispatch, d):
    """SIGHUP reads the files again: a certificate renewed in place reaches
    new clients while a connected one keeps its session; a broken file is
    an error that keeps the running context."""
    live = os.path.join(d, "live")
    os.mkdir(live)
    for ext in ("crt", "key"):
        shutil.copy(os.path.join(d, "server." + ext), os.path.join(live, "server." + ext))
    srv = Server(binary, dispatch, d, "tls.cert=" + os.path.join(live, "server.crt"),
                 "tls.key=" + os.path.join(live, "server.key"))
    old = tls_connect(srv.port, client_ctx(d))
    check(read_lines(old, 1) == b"Welcome to my server\r\n" and peer_cn(old) == "server",
          "before the reload: the first certificate")
    for ext in ("crt", "key"):
        shutil.copy(os.path.join(d, "renewed." + ext), os.path.join(live, "server." + ext))
    srv.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while srv.stat("reloads") < 1 and time.time() < deadline:
        time.sleep(0.05)
    new = tls_connect(srv.port, client_ctx(d))
    check(read_lines(new, 1) == b"Welcome to my server\r\n" and peer_cn(new) == "renewed",
          "after SIGHUP: new clients get the renewed certificate (%s)" % peer_cn(new))
    old.sendall(b"still here\n")
    check(read_lines(old, 1) == b"still here\n", "a client connected before keeps its session")
    new.close()
    with open(os.path.join(live, "server.crt"), "w") as f:
        f.write("not a certificate\n")
    srv.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while srv.stat("reload_errors") < 1 and time.time() < deadline:
        time.sleep(0.05)
    check(srv.stat("reload_errors") == 1 and
          "tls.cert: " + os.path.join(live, "server.crt") in srv.text(),
          "a broken certificate: a reload error naming the file")
    third = tls_connect(srv.port, client_ctx(d))
    check(read_lines(third, 1) == b"Welcome to my server\r\n" and peer_cn(third) == "renewed",
          "... and new clients still get the running one")
    third.close()
    old.close()
    srv.stop(allow="reload: tls.cert: ")


def mismatched_key(binary, dispatch, d):
    srv = Server(binary, dispatch, d, "tls.key=" + os.path.join(d, "client.key"),
                 expect_start=False)
    try:
        rc = srv.p.wait(20)
    except subprocess.TimeoutExpired:
        srv.p.kill()
        rc = -9
    text = srv.text()
    check(rc != 0 and "tls.key: " + os.path.join(d, "client.key") in text,
          "a key that does not match the certificate: no start, the file named (%s)"
          % text.strip().splitlines()[-1:])


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    binary, dispatch = sys.argv[1:3]
    if shutil.which("openssl") is None:
        if os.environ.get("POOLSRV_REQUIRE_TOOLS"):
            print("the openssl tool is missing (Debian package openssl)")
            return 1
        print("skipped: the openssl tool is missing (Debian package openssl)")
        return 77
    d = tempfile.mkdtemp(prefix="poolsrv-tls-")
    try:
        make_certs(d)
        probe = subprocess.run([binary, "-t", "-o", "tls.enabled=true",
                                "-o", "tls.cert=" + os.path.join(d, "server.crt"),
                                "-o", "tls.key=" + os.path.join(d, "server.key")],
                               capture_output=True, text=True, timeout=20)
        if "built without OpenSSL" in probe.stderr + probe.stdout:
            what = "poolsrv was built without OpenSSL (libssl-dev)"
            print(("" if os.environ.get("POOLSRV_REQUIRE_TOOLS") else "skipped: ") + what)
            return 1 if os.environ.get("POOLSRV_REQUIRE_TOOLS") else 77
        # Event mode with one worker: a handshake that waits holds none.
        # (Connection mode: a worker owns its client from the handshake on.)
        workers = "pool.workers=1" if dispatch == "event" else "pool.workers=4"
        srv = Server(binary, dispatch, d, "tls.handshake_timeout=1", workers)
        echo(srv, d)
        not_tls(srv)
        silent(srv, d)
        srv.stop()
        client_certs(binary, dispatch, d)
        proxy_then_tls(binary, dispatch, d)
        reload_certs(binary, dispatch, d)
        mismatched_key(binary, dispatch, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("%s: %d failure(s)" % (dispatch, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
