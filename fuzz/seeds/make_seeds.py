#!/usr/bin/env python3
"""Write the committed seed corpora, fuzz/seeds/<target>/, a few KB each, from the test
suites and the router corpus. Run from anywhere: `python3 fuzz/seeds/make_seeds.py`.
Targets whose input is shaped by `arbitrary` (mask_tokens, hint, hash, hash_pg, shard_map,
scram, auth_misc) start from nothing: their structure comes from the bytes themselves."""
import hashlib
import os
import re
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUDGET = 6000  # bytes per target, at most
MAX_FILES = 60


def write(target, items):
    d = os.path.join(HERE, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    total = 0
    items = list(items)
    if len(items) > MAX_FILES:
        # Evenly spread over the list (callers sort by length: short and long ones).
        items = [items[i * len(items) // MAX_FILES] for i in range(MAX_FILES)]
    for data in items:
        if isinstance(data, str):
            data = data.encode()
        if total + len(data) > BUDGET or len(os.listdir(d)) >= MAX_FILES:
            continue
        total += len(data)
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(os.listdir(d))} seeds, {total} bytes")


def cstr(s):
    return s.encode() + b"\0"


def frame(tag, body):
    return tag.encode() + struct.pack(">i", len(body) + 4) + body


def startup(params, minor=0):
    return struct.pack(">i", (3 << 16) | minor) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"


# decode: selector byte (0 startup, 1 ErrorResponse, 2 Authentication, 3 ReadyForQuery,
# 4 ParameterStatus, 5 BackendKeyData, 6 SASLInitialResponse, 7 PasswordMessage, 8 Query).
decode = [
    b"\0" + startup([("user", "app"), ("database", "db")]),
    b"\0" + startup([("user", "app"), ("database", "app"), ("application_name", "psql"), ("options", "-c search_path=x")], 2),
    b"\0" + struct.pack(">i", 80877103),
    b"\0" + struct.pack(">i", 80877104),
    b"\0" + struct.pack(">iii", 80877102, 7, 9),
    b"\0" + struct.pack(">i", 2 << 16),
    b"\1" + b"SERROR\0VERROR\0C28P01\0Mpassword authentication failed\0\0",
    b"\1" + b"SFATAL\0C57P01\0Mterminating connection\0Rx\0\0",
    b"\2" + struct.pack(">i", 0),
    b"\2" + struct.pack(">i", 3),
    b"\2" + struct.pack(">i", 5) + b"salt",
    b"\2" + struct.pack(">i", 10) + b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0",
    b"\2" + struct.pack(">i", 11) + b"r=abc,s=c2FsdA==,i=4096",
    b"\2" + struct.pack(">i", 12) + b"v=c2lnbmF0dXJl",
    b"\3I", b"\3T", b"\3E",
    b"\4" + cstr("server_version") + cstr("16.0"),
    b"\4" + cstr("client_encoding") + b"LATIN1\xe9\0",
    b"\5" + struct.pack(">ii", 1234, -5),
    b"\6" + cstr("SCRAM-SHA-256") + struct.pack(">i", 24) + b"n,,n=,r=rOprNGfwEbeRWgbN",
    b"\6" + cstr("SCRAM-SHA-256") + struct.pack(">i", -1),
    b"\7" + cstr("md56a422f785c9e20873908ce25d1736ae2"),
    b"\x08" + cstr("select 1"),
    b"\x08" + b"select '\xe9'\0",
]
write("decode", decode)

# extended: selector byte (0 Parse, 1 Bind, 2 Describe/Close, 3 built from parts).
extended = [
    b"\0" + cstr("s1") + cstr("select $1") + struct.pack(">hi", 1, 23),
    b"\0" + cstr("") + cstr("select * from orders where account_id = $1 and id = $2") + struct.pack(">hii", 2, 20, 20),
    b"\0" + cstr("") + cstr("begin") + struct.pack(">h", 0),
    b"\1" + cstr("") + cstr("s1") + struct.pack(">hh", 0, 0) + struct.pack(">h", 0),
    b"\1" + b"\0s\0\0\x01\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0",
    b"\1" + b"\0s\0\0\x01\0\x01\0\x01\0\0\0\x08\0\0\0\0\0\0\0\x2a\0\0",
    b"\1" + b"p1\0s\0\0\x02\0\0\0\x01\0\x02\0\0\0\x01a\0\0\0\x04\0\0\0\x07\0\x01\0\x01",
    b"\2Ss1\0", b"\2P\0", b"\x12Sx\0",
]
write("extended", extended)

# frame: [max: 3 bytes][flags][stream]: a client's pipelines, cut in pieces.
def frames(*fs):
    return b"".join(fs)


q = frame("Q", cstr("select 1"))
ext = frames(frame("P", cstr("") + cstr("select $1") + struct.pack(">h", 0)),
             frame("B", b"\0\0" + struct.pack(">hhih", 0, 1, 1, 0) + b"5"[:0] + b""),
             frame("D", b"P\0"), frame("E", b"\0" + struct.pack(">i", 0)), frame("S", b""))
framed = [
    b"\x00\x40\x00\x01" + q,
    b"\x00\x40\x00\x06" + q + q + frame("X", b""),
    b"\x00\x40\x00\x0b" + ext,
    b"\x00\x00\x10\x02" + frame("Q", cstr("x" * 40)),
    b"\x00\x40\x00\x00" + q + b"Q\0\0\0\x03",
    b"\x10\x00\x00\x03" + b"d" + struct.pack(">i", 2 * 1024 * 1024) + b"partial",
    b"\x00\x40\x00\x05" + frame("Z", b"I") + frame("C", cstr("SELECT 1")) + b"D\0\0",
]
write("frame", framed)

# SQL: the router corpus (Django, psql, hints), then the router's own tests.
def unescape(s):
    """A Rust string literal's escapes (\\n, \\t, \\", \\\\, \\u{…}, …)."""
    simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "'": "'", "\\": "\\"}
    return re.sub(r"\\(u\{([0-9a-fA-F]+)\}|.)",
                  lambda m: chr(int(m.group(2), 16)) if m.group(2) else simple.get(m.group(1), m.group(1)), s)


def rust_strings(path):
    text = open(os.path.join(ROOT, path)).read()
    out = re.findall(r'r#"(.*?)"#', text, re.S)
    out += [unescape(s) for s in re.findall(r'"((?:[^"\\\n]|\\.){8,})"', text)]
    return out


sql = [s for s in rust_strings("src/router/corpus.rs") if any(k in s.lower() for k in ("select", "insert", "update", "delete", "begin", "set ", "with", "copy", "create"))]
sql += [s for s in rust_strings("src/router/tests.rs") if any(k in s.lower() for k in ("select", "insert", "update", "delete", "tenant_id"))]
sql.sort(key=len)
write("plan", sql)
mask_seeds = [s for s in sql if any(c in s for c in "'$-/E")]
mask_seeds += rust_strings("src/router/mask.rs")
write("mask", sorted(set(mask_seeds), key=len))
cmd = [s for s in rust_strings("src/router/command.rs") if s.strip()]
cmd += ["SET search_path = x; select 1", "PREPARE p AS select 1; EXECUTE p", "DEALLOCATE ALL",
        "LISTEN \"Chan\"", "UNLISTEN *", "DISCARD ALL", "drop database if exists x",
        "select set_config('app.tenant', '42', false)", "SET app.tenant = 5", "set local x = 1"]
write("command", sorted(set(cmd), key=len))

admin = ["SHOW POOLS;", "show stats_totals", "SHOW TENANT 'acme' events", "show shards orders",
         "SET server_check_query='select ''x'''", "set pool_size = 5", "kill_client 42",
         "PAUSE app", "RESUME", "RECONNECT", "WAIT_CLOSE app", "SHOW HELP", "show help;",
         "reload", "suspend", "shutdown", "kill db", "show config", ";", "SET a TO 'b'",
         "SHOW TENANT ACTIVITY 42 TABLE orders", "show tenant 'activity' events",
         "SHOW QUIET TENANTS TABLE orders WINDOW 24h LIMIT 10", "show quiet tenants limit 5"]
write("admin", admin)

toml = open(os.path.join(ROOT, "config/pgtenant.toml")).read()
# The example config without its comments (it is mostly comments), and small variants.
bare = "\n".join(l for l in toml.splitlines() if l.strip() and not l.lstrip().startswith("#"))
write("config_toml", [bare, 'listen = "127.0.0.1:6432"\nupstream = "postgres://app@127.0.0.1:5432/app"\npool_mode = "transaction"\n',
                      'pool_size = -1\n[users.app]\npool_mode = "session"\n[databases]\nx = "host=h port=1 dbname=y"\n'])
ini = [open(os.path.join(ROOT, "tests/pgbouncer_ini", f)).read() for f in sorted(os.listdir(os.path.join(ROOT, "tests/pgbouncer_ini")))]
write("pgbouncer_ini", [t.replace("%include", ";%include") for t in ini])


# Dictionaries (libFuzzer's -dict format): SQL keywords and the words the router reads,
# protocol tags and codes, admin console words, configuration keys.
def write_dict(name, words):
    def q(w):
        if isinstance(w, str):
            w = w.encode()
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\x%02x" % b for b in w) + '"'
    path = os.path.join(ROOT, "fuzz", "dict", name)
    words = list(dict.fromkeys(words))
    with open(path, "w") as f:
        f.write(f"# {name}: written by fuzz/seeds/make_seeds.py\n")
        for w in words:
            f.write(q(w) + "\n")
    print(f"dict/{name}: {len(words)} entries")


sql_words = """select from where and or not in is null like ilike between as join inner left right
full outer cross on using group by order having limit offset insert into values update set
delete returning with recursive union all except intersect distinct case when then else end
exists any some begin commit rollback savepoint release start transaction local session
prepare execute deallocate discard listen unlisten notify copy explain analyze create alter
drop table truncate grant revoke vacuum show reset lock for share nowait skip locked conflict
do nothing default nextval currval setval lastval set_config pg_advisory_lock interval
timestamptz int8 bigint int4 integer text uuid varchar char bpchar now collate similar to
escape array cast lateral window over partition""".split()
sql_tokens = ["'", "''", "E'", "$$", "$a$", "$1", "$2", "::", "--", "/*", "*/", "/* tenant_id=42 */",
              "/*tenant_id='acme'*/", "tenant_id=", ";", "(", ")", ",", "=", "<>", "-", "\"\"", "U&'",
              "X'", "B'", "N'", "1e-3", ".5", "-5", "\u0001", "%20", "\\'"]
catalog_words = ["accounts", "orders", "items", "shop_account", "shop_order", "shop_orderitem",
                 "events", "devices", "plans", "shop_plan", "account_id", "id", "tenant", "org",
                 "public.", "\"shop_order\".\"account_id\""]
write_dict("sql.dict", sql_words + [w.upper() for w in sql_words[:20]] + sql_tokens + catalog_words)

proto = [struct.pack(">i", c) for c in (196608, 80877103, 80877104, 80877102, 0, 3, 5, 10, 11, 12, 4, -1, 8)]
proto += [t.encode() + b"\0\0\0" for t in "QPBDECSHXFdcfpRZTKSNAIstnG"]
proto += [b"SCRAM-SHA-256\0", b"user\0", b"database\0", b"application_name\0", b"options\0",
          b"replication\0", b"n,,n=,r=", b",r=", b",s=", b",i=", b",p=", b"c=biws", b"v=", b"e=",
          b"\xff\xff\xff\xff", b"\x00\x01", b"\x00\x00\x00\x04"]
write_dict("protocol.dict", proto)

admin_words = ["SHOW", "HELP", "POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "SERVERS",
               "CLIENTS", "DATABASES", "USERS", "CONFIG", "LISTS", "VERSION", "STATE", "NODES",
               "ROUTES", "PLAN_CACHE", "TENANTS", "LATENCY", "SHARDS", "TENANT", "SET", "TO", "=",
               "RELOAD", "PAUSE", "RESUME", "RECONNECT", "KILL", "KILL_CLIENT", "SUSPEND",
               "SHUTDOWN", "WAIT_CLOSE", "ACTIVITY", "QUIET", "TABLE", "WINDOW", "LIMIT", "24h",
               "'", "''", ";"]
write_dict("admin.dict", admin_words)

keys = re.findall(r"^#?\s*([a-z_]+)\s*=", toml, re.M)
keys += re.findall(r'"([a-z_]+)"', open(os.path.join(ROOT, "src/config/pgbouncer.rs")).read())
sections = ["[pgbouncer]", "[databases]", "[users]", "[users.app]", "[databases.app]", "%include ",
            " = ", "true", "false", "\"\"", "[]", "\"127.0.0.1:6432\"", "postgres://", "host=", "port=",
            "dbname=", "user=", "pool_mode=", "session", "transaction", "statement", "*", ";", "#"]
write_dict("config.dict", keys + sections)
