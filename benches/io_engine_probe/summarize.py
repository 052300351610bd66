#!/usr/bin/env python3
"""Turn run.sh's raw TSV into markdown tables: median and [min–max] over reps."""
import sys, statistics, collections

rows = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    mode, eng, n, rep, load, rest = line.rstrip("\n").split("\t", 5)
    if rest == "FAILED":
        continue
    kv = dict(x.split("=", 1) for x in rest.split())
    key = (mode, eng, int(n))
    if key not in order:
        order.append(key)
    rows[key].append({k: float(v) for k, v in kv.items()} | {"loadavg": float(load)})

def cell(vals, fmt):
    vals = [v for v in vals if v == v]  # drop NaN
    if not vals:
        return "n/a"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(m)
    return (fmt + " [" + fmt + "–" + fmt + "]").format(m, min(vals), max(vals))

engines = []
for (_, e, _) in order:
    if e not in engines:
        engines.append(e)

for mode, title in (("main", "Unpinned, relay threads as run.sh THREADS (2 = one per core)"),
                    ("pinned", "N=1, relay pinned alone to CPU 0 (1 thread), load+backend on CPU 1")):
    keys = [k for k in order if k[0] == mode]
    if not keys:
        continue
    print(f"\n### {title}\n")
    print("| engine | N | runs | tx/s | relay CPU µs/tx (user+sys) | of which sys | relay syscalls/tx | ctx-switches/tx | p50 µs | p99 µs | relay CPU % | host busy % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ns = sorted({k[2] for k in keys})
    for n in ns:
        for e in engines:
            r = rows.get((mode, e, n))
            if not r:
                continue
            g = lambda k: [x[k] for x in r]
            lat = n == 1
            print(f"| {e} | {n} | {len(r)} | {cell(g('tps'), '{:.0f}')} | {cell(g('cpu_us_per_tx'), '{:.1f}')} | "
                  f"{cell(g('sys_us_per_tx'), '{:.1f}')} | {cell(g('syscalls_per_tx'), '{:.2f}')} | {cell(g('ctxsw_per_tx'), '{:.2f}')} | "
                  f"{cell(g('p50_us'), '{:.0f}') if lat else '–'} | {cell(g('p99_us'), '{:.0f}') if lat else '–'} | "
                  f"{cell(g('relay_cpu_pct'), '{:.0f}')} | {cell(g('host_busy_pct'), '{:.0f}')} |")
