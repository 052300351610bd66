#!/usr/bin/env python3
"""The values fuzz/oracle/capture.sh asks PostgreSQL to hash: one `type<TAB>hex` line each
(hex of the UTF-8 input text). Edge cases of every input rule hash_value follows, plus
reproducible pseudo-random values; kept small (the answers are committed)."""
import random

rng = random.Random(15)
out = []


def add(t, s):
    out.append((t, s.encode().hex()))


def edges(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = {0, 1, -1, lo, lo + 1, hi, hi - 1, 42}
    for k in range(0, bits, 3):
        v.update({1 << k, -(1 << k), (1 << k) - 1})
    return sorted(x for x in v if lo <= x <= hi)


for t, bits in (("int2", 16), ("int4", 32), ("int8", 64)):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    vals = edges(bits) + [rng.randint(lo, hi) for _ in range(40)]
    for v in vals:
        add(t, str(v))
    # Just past the range, with and without trailing junk (PostgreSQL's order of checks).
    for s in (str(hi + 1), str(lo - 1), str(hi + 1) + "x", str(-lo) + "x", str(lo) + "x",
              str(hi) + "0", "-" + str(-lo) + " ", " " + str(hi + 1) + " ", "9" * 30,
              "-" + "9" * 30 + "x", "0" * 40 + "1"):
        add(t, s)
for t in ("int2", "int4", "int8"):
    for s in ("42", "-42", "+42", " 42", "42 ", "  -42  ", "\t42\n", "\r\x0b\x0c 42",
              "0042", "-0", "+0", "", " ", "-", "+", "+-1", "-+1", "4 2", "42x", "x42",
              "4.2", "1e3", "0x1F", "1_000", "\u00a042", "42\u00a0", "\uff14\uff12",
              "--1", "0o17", "0b101", "-00000", "١٢"):
        add(t, s)
texts = ["", " ", "a", "acme", "acme ", " acme", "acme\t", "é", "日本語", "😀",
         "tenant-00042", "Ünïcödé テナント 🚀 tenant", "a" * 40, "x" * 127, "y" * 300]
alphabet = "abcXYZ019 _-'\"\\\t\né日本語😀ßЖ\u007f\u0080\u07ff\u0800\uffff\U0010ffff"
for n in range(0, 41, 3):
    texts.append("".join(rng.choice(alphabet) for _ in range(n)))
for s in texts:
    for t in ("text", "bpchar"):
        add(t, s)
for base in ("", "x", "acme", "日本"):
    for n in (1, 2, 13):
        add("bpchar", base + " " * n)
    add("bpchar", base + "\t")
for _ in range(30):
    u = "%032x" % rng.getrandbits(128)
    d = "-".join((u[:8], u[8:12], u[12:16], u[16:20], u[20:]))
    for s in (d, d.upper(), "{" + d + "}", u, "{" + u.upper() + "}",
              "-".join(u[i:i + 4] for i in range(0, 32, 4))):
        add("uuid", s)
for s in ("", "{}", "0" * 31, "0" * 33, "{" + "0" * 32, "0" * 32 + "}", "-" + "0" * 32,
          "0" * 32 + "-", "0000-" * 7 + "0000", "0" * 4 + "--" + "0" * 28,
          "0" * 3 + "-" + "0" * 29, " " + "0" * 32, "0" * 32 + " ", "g" * 32,
          "00000000-0000-0000-0000-00000000002a", "00000000-0000-0000-0000-00000000002A"):
    add("uuid", s)
for t, h in out:
    print(f"{t}\t{h}")
