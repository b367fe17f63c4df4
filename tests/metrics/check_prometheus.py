#!/usr/bin/python3
"""Reads a Prometheus text exposition on stdin (test_metrics --emit) and
checks it with the real parser, prometheus_client's
text_string_to_metric_families: every family has HELP and TYPE, its type is
counter, gauge or histogram, no family appears twice, every value is a
finite number >= 0, and each histogram's buckets rise with le, are
cumulative, and end in le="+Inf" equal to _count, beside a _sum.
Exits 0 when all hold, 1 saying what does not, 77 (skip) without the
parser (Debian: apt-get install python3-prometheus-client)."""

import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(f"skipped: prometheus_client not importable by {sys.executable} ({e}); "
          "apt-get install python3-prometheus-client")
    sys.exit(77)

TYPES = {"counter", "gauge", "histogram"}


def raw_checks(text, errors):
    """What the lax parser lets through: HELP and TYPE once each, in that
    order, for every family; no NaN anywhere."""
    helps, types = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            helps.append(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            if not helps or helps[-1] != name:
                errors.append(f"line {n}: TYPE {name} not right after its HELP")
            types.append(name)
        if "nan" in line.lower():
            errors.append(f"line {n}: NaN: {line!r}")
    for kind, names in (("HELP", helps), ("TYPE", types)):
        seen = set()
        for name in names:
            if name in seen:
                errors.append(f"{kind} {name} appears twice")
            seen.add(name)
    if set(helps) != set(types):
        errors.append(f"HELP without TYPE or the reverse: {sorted(set(helps) ^ set(types))}")


def check_histogram(fam, errors):
    buckets, sums, counts = [], [], []
    for s in fam.samples:
        if s.name == fam.name + "_bucket":
            buckets.append((float(s.labels["le"]), s.labels["le"], s.value))
        elif s.name == fam.name + "_sum":
            sums.append(s.value)
        elif s.name == fam.name + "_count":
            counts.append(s.value)
    if not buckets or len(sums) != 1 or len(counts) != 1:
        errors.append(f"{fam.name}: want buckets, one _sum and one _count")
        return
    bounds = [b[0] for b in buckets]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        errors.append(f"{fam.name}: le not strictly rising: {[b[1] for b in buckets]}")
    values = [b[2] for b in buckets]
    if any(later < earlier for earlier, later in zip(values, values[1:])):
        errors.append(f"{fam.name}: buckets not cumulative: {values}")
    if not math.isinf(bounds[-1]) or buckets[-1][1] != "+Inf":
        errors.append(f'{fam.name}: last bucket is le="{buckets[-1][1]}", not "+Inf"')
    elif values[-1] != counts[0]:
        errors.append(f"{fam.name}: +Inf bucket {values[-1]} != _count {counts[0]}")


def main():
    text = sys.stdin.read()
    errors = []
    raw_checks(text, errors)
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's own complaint, whatever its type
        print(f"FAIL: the Prometheus parser refused the text: {e}")
        return 1
    if not families:
        errors.append("no metric families in the input")
    seen = set()
    for fam in families:
        if fam.name in seen:
            errors.append(f"family {fam.name} appears twice")
        seen.add(fam.name)
        if not fam.documentation:
            errors.append(f"{fam.name}: no HELP")
        if fam.type not in TYPES:
            errors.append(f"{fam.name}: type {fam.type!r} (no TYPE line, or its samples are "
                          "misnamed)")
        if not fam.samples:
            errors.append(f"{fam.name}: no samples")
        for s in fam.samples:
            if math.isnan(s.value) or math.isinf(s.value) or s.value < 0:
                errors.append(f"{s.name}: value {s.value}")
        if fam.type == "histogram":
            check_histogram(fam, errors)
    if errors:
        for e in errors:
            print("FAIL:", e)
        return 1
    kinds = {t: sum(f.type == t for f in families) for t in sorted(TYPES)}
    print(f"ok: {len(families)} families ({kinds}), parsed by prometheus_client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
