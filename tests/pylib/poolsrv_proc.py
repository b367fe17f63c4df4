"""A poolsrv program run by a Python test: started on free loopback ports,
asked through its admin port, stopped with SIGTERM and its log checked.
Shared by the Python checks under tests/ (bounds, tls)."""
import os
import re
import socket
import subprocess
import sys
import time

failures = []


def check(cond, what):
    """Records and prints one expectation; main() sums them up."""
    print(("ok:   " if cond else "FAIL: ") + what)
    if not cond:
        failures.append(what)


class Server:
    def __init__(self, binary, overrides, log_dir="/tmp", listening=r"listening on 127\.0\.0\.1:(\d+)",
                 expect_start=True):
        """poolsrv with ports 0, then each "section.key=value" override; waits
        (20 s at most) for its listening line, unless expect_start is False."""
        self.log = open(os.path.join(log_dir, "poolsrv.%d.%d.log" % (os.getpid(), time.time_ns())),
                        "w+")
        argv = [binary, "-o", "server.port=0", "-o", "admin.port=0"]
        for o in overrides:
            argv += ["-o", o]
        # A sanitizer build keeps freed memory in quarantine (256 MB by
        # default): kept small, RSS measures what the server holds.
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8").lstrip(":")
        self.p = subprocess.Popen(argv, stderr=self.log, stdout=subprocess.DEVNULL, env=env)
        self.port = self.admin = None
        if not expect_start:
            return
        deadline = time.time() + 20
        while time.time() < deadline:
            text = self.text()
            m = re.search(listening, text)
            a = re.search(r"admin on 127\.0\.0\.1:(\d+)", text)
            if m and a:
                self.port, self.admin = int(m.group(1)), int(a.group(1))
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        print("poolsrv did not start:", self.text())
        self.p.kill()
        sys.exit(1)

    def text(self):
        self.log.seek(0)
        return self.log.read()

    def rss_mb(self):
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return -1

    def admin_command(self, cmd):
        with socket.create_connection(("127.0.0.1", self.admin), timeout=5) as s:
            s.sendall(cmd)
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data

    def stat(self, name):
        m = re.search(rb"STAT " + name.encode() + rb" (\d+)", self.admin_command(b"stats\r\n"))
        return int(m.group(1)) if m else -1

    def stop(self, allow=None):
        """SIGTERM: exit 0 within 20 s, and a log without ERROR lines (but
        those containing `allow`) or sanitizer reports."""
        self.p.terminate()
        try:
            rc = self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = -9
        check(rc == 0, "poolsrv exited 0 on SIGTERM (got %s)" % rc)
        bad = [l for l in self.text().splitlines()
               if (" ERROR " in l and (allow is None or allow not in l))
               or "Sanitizer" in l or "runtime error" in l]
        check(not bad, "a clean log %s" % bad[:3])
