#!/usr/bin/python3
"""The docs say what the code does: a check for drift between them.

usage: check.py SOURCE_DIR POOLCTL_BIN

- every configuration key of the schema (src/server/config.c) is in the
  README's table, in poolsrv.ini(5) and in conf/server.ini (set or shown
  commented);
- every admin command (src/server/admin.c's table) is in the README's admin
  table, poolsrv(8), poolctl(1) and `poolctl --help` (but `quit`, which
  poolctl has no use for);
- every `STAT` line of the admin `stats` reply is named in the README.

Exit 0 when the docs hold everything, 1 listing what is missing. It checks
itself too: a key, a command and a stat that do not exist must be reported.
"""
import os
import re
import subprocess
import sys

# Keys the shipped file leaves out on purpose.
NOT_IN_CONF = {
    "server.greeting": "the older spelling of handler.greeting, shown commented under [handler]",
}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def config_keys(src):
    text = read(os.path.join(src, "src/server/config.c"))
    return sorted(set(re.findall(r'PS__[A-Z]+\(\s*"(\w+)",\s*"(\w+)"', text)))


def admin_commands(src):
    text = read(os.path.join(src, "src/server/admin.c"))
    return re.findall(r'\[CMD_\w+\] = \{"([^"]+)"', text)


def stat_names(src):
    text = read(os.path.join(src, "src/server/admin.c"))
    return sorted(set(re.findall(r'"STAT (\w+) %', text)))


def missing(src, poolctl_help, keys, commands, stats):
    readme = read(os.path.join(src, "README.md"))
    ini5 = read(os.path.join(src, "docs/man/poolsrv.ini.5"))
    conf = read(os.path.join(src, "conf/server.ini"))
    srv8 = read(os.path.join(src, "docs/man/poolsrv.8"))
    ctl1 = read(os.path.join(src, "docs/man/poolctl.1"))
    out = []
    for section, key in keys:
        name = "%s.%s" % (section, key)
        if "`%s`" % name not in readme:
            out.append("README.md: no row for `%s`" % name)
        if not re.search(r"^\.BR? %s\b" % re.escape(key), ini5, re.M):
            out.append("poolsrv.ini(5): no .B %s" % key)
        if name not in NOT_IN_CONF and not re.search(
                r"^;?\s*%s\s*=" % re.escape(key), conf, re.M):
            out.append("conf/server.ini: no line for %s" % name)
    for cmd in commands:
        if "| `%s` |" % cmd not in readme:
            out.append("README.md: no admin row for `%s`" % cmd)
        if not re.search(r"^\.BR? %s\b" % re.escape(cmd), srv8, re.M) and cmd.split()[0] not in srv8:
            out.append("poolsrv(8): admin command %s not named" % cmd)
        if not re.search(r"^\.BR? %s\s*$" % re.escape(cmd), ctl1, re.M) and cmd != "quit":
            out.append("poolctl(1): no .B %s" % cmd)
        if cmd != "quit" and cmd not in poolctl_help:
            out.append("poolctl --help: %s not listed" % cmd)
    for stat in stats:
        if not re.search(r"`[^`\n]*\b%s\b[^`\n]*`" % re.escape(stat), readme):
            out.append("README.md: stat `%s` not named" % stat)
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    src, poolctl = sys.argv[1:3]
    helptext = subprocess.run([poolctl, "--help"], capture_output=True, text=True,
                              timeout=10).stdout
    keys, commands, stats = config_keys(src), admin_commands(src), stat_names(src)
    # The extraction must find what is surely there, or the check checks nothing.
    sane = (("limits", "max_line") in keys and len(keys) > 20 and "stats conns" in commands
            and "threads" in commands and "curr_connections" in stats)
    if not sane:
        print("could not read the schema, the commands or the stats: %d keys, %r, %d stats"
              % (len(keys), commands, len(stats)))
        return 1
    # And it must see a drift: made-up names are reported missing.
    probe = missing(src, helptext, [("limits", "no_such_key")], ["no such command"],
                    ["no_such_stat"])
    if len(probe) != 7:
        print("the check does not report made-up names: %r" % probe)
        return 1
    out = missing(src, helptext, keys, commands, stats)
    for line in out:
        print("missing:", line)
    print("%d keys, %d admin commands, %d stats checked; %d missing"
          % (len(keys), len(commands), len(stats), len(out)))
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
