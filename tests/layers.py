#!/usr/bin/python3
"""The library's files form layers: no file calls a function of a file
that (directly or through others) calls back into it.

Reads the symbols each object file of the library defines and uses (nm),
draws the graph "file A calls file B", and fails naming every circle.
Arguments: the object files (one argument, ';'-separated, as CMake's
$<TARGET_OBJECTS> gives them, or several)."""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRV":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
    return defined, used


def name_of(obj):
    # .../poolsrv_objects.dir/src/server/conn.c.o -> server/conn.c
    parts = obj.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])[: -len(".o")]


def circles(graph):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv):
    # The finder must find a circle where there is one.
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    objs = [o for arg in argv for o in arg.split(";") if o.endswith(".o")]
    if len(objs) < 10:
        print("expected the library's object files, got %d" % len(objs))
        return 1
    defs, uses = {}, {}
    for o in objs:
        defs[name_of(o)], uses[name_of(o)] = symbols(o)
    owner = {s: f for f, d in defs.items() for s in d}
    graph, why = {}, {}
    for f, used in uses.items():
        for s in used:
            t = owner.get(s)
            if t is not None and t != f:
                graph.setdefault(f, set()).add(t)
                why.setdefault((f, t), []).append(s)
    found = circles(graph)
    for comp in found:
        print("circle: " + ", ".join(comp))
        for f in comp:
            for t in sorted(graph.get(f, ())):
                if t in comp:
                    print("  %s -> %s (%s)" % (f, t, ", ".join(sorted(why[(f, t)]))))
    print("%d files, %d calls between files, %d circles"
          % (len(defs), sum(len(v) for v in graph.values()), len(found)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
