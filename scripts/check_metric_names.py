#!/usr/bin/env python3
"""Check the Grafana dashboard and the Prometheus alert rules against what /metrics serves.

    python3 scripts/check_metric_names.py

The metric families, their types and label names are read from FAMILIES in
src/metrics/collect/families.rs. Then, in deploy/grafana/pgtenant.json, deploy/prometheus/alerts.yml
and deploy/prometheus/alerts_test.yml:

- every pgtenant_* series named in a query exists (a histogram as _bucket, _sum or _count);
- every label a selector matches, a query groups or joins by (by, without, on, ignoring,
  group_left, group_right), a legend ({{label}}) or an annotation ({{ $labels.label }})
  prints is one the query's metrics carry (plus job and instance from the scrape, and le
  of a _bucket series);
- every label value matched literally (=, !=, or a =~ list of plain words) is a string the
  code exports (a literal in collect/, counters.rs or routing.rs); node names, job,
  instance and le are not checked;
- every series of the alert unit tests has exactly the labels pgtenant exports;
- the dashboard shows every family.

Exits 1 with one line per problem. Needs only the standard library.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECT = ROOT / "src/metrics/collect/families.rs"
VALUE_SOURCES = [
    ROOT / "src/metrics/collect/mod.rs",
    ROOT / "src/metrics/collect/throttled.rs",
    ROOT / "src/metrics/counters.rs",
    ROOT / "src/frontend/routing.rs",
]
DASHBOARD = ROOT / "deploy/grafana/pgtenant.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts_test.yml"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Labels whose values are not fixed strings in the code (database: a [databases] entry name;
# tenant: a tenant value, or "other").
FREE_VALUES = {"job", "instance", "node", "le", "database", "tenant"}

NAME = re.compile(r"\bpgtenant_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(pgtenant_[a-z0-9_]+)\s*(\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LABEL_VALUES = re.compile(r"label_values\(\s*([^,()]+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def families():
    """{name: (type, [labels])} from FAMILIES in collect/families.rs."""
    text = COLLECT.read_text()
    start = text.index("const FAMILIES")
    body = text[start : text.index("\n];", start)]
    fams = {}
    for m in re.finditer(
        r'\(\s*"(pgtenant_[a-z0-9_]+)",\s*(COUNTER|GAUGE|HISTOGRAM),\s*&\[([^\]]*)\]', body
    ):
        fams[m.group(1)] = (m.group(2), re.findall(r'"([^"]+)"', m.group(3)))
    if len(fams) < 10:
        sys.exit(f"{COLLECT}: could not read FAMILIES (found {len(fams)})")
    return fams


FAMILIES = families()


def series_labels():
    """{series name: set of labels} for every series /metrics serves."""
    out = {}
    for name, (kind, labels) in FAMILIES.items():
        labels = set(labels)
        if kind == "HISTOGRAM":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


SERIES = series_labels()
LITERALS = set()
for src in VALUE_SOURCES:
    LITERALS |= set(re.findall(r'"([^"\\]*)"', src.read_text()))


def family_of(series):
    for suffix in ("_bucket", "_sum", "_count"):
        base = series[: -len(suffix)]
        if series.endswith(suffix) and FAMILIES.get(base, ("",))[0] == "HISTOGRAM":
            return base
    return series


def check_values(where, label, op, value):
    if label in FREE_VALUES or "$" in value:
        return
    if op in ("=~", "!~"):
        if not re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value):
            return  # a real regular expression: not checked
        values = value.split("|")
    else:
        values = [value]
    for v in values:
        if v not in LITERALS:
            problem(where, f'label value {label}="{v}" is not one pgtenant exports')


def check_expr(where, expr):
    """Check one PromQL expression; return the labels its series may carry."""
    allowed = set(TARGET_LABELS)
    for m in SELECTOR.finditer(expr):
        name, matchers = m.group(1), m.group(3) or ""
        if name not in SERIES:
            problem(where, f"unknown series {name}")
            continue
        labels = SERIES[name] | TARGET_LABELS
        allowed |= labels
        for lm in MATCHER.finditer(matchers):
            label, op, value = lm.groups()
            if label not in labels:
                problem(where, f"{name} has no label {label}")
            else:
                check_values(where, label, op, value)
    for m in LABEL_VALUES.finditer(expr):
        name, label = m.group(1).split("{")[0].strip(), m.group(2)
        if name in SERIES and label not in SERIES[name] | TARGET_LABELS:
            problem(where, f"label_values: {name} has no label {label}")
    for m in GROUPING.finditer(expr):
        for label in filter(None, (l.strip() for l in m.group(2).split(","))):
            if label not in allowed:
                problem(where, f"{m.group(1)} ({label}): no series of the query has it")
    return allowed


def check_text_names(where, text):
    """pgtenant_* names in prose (help, descriptions) must be families or series."""
    for name in NAME.findall(text):
        if name not in SERIES and name not in FAMILIES:
            problem(where, f"unknown metric {name}")


def walk_json(node, path, out):
    if isinstance(node, dict):
        for k, v in node.items():
            walk_json(v, f"{path}.{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk_json(v, f"{path}[{i}]", out)
    elif isinstance(node, str):
        out.append((path, node))


def check_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    used = set()
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        for t in panel.get("targets", []):
            where = f"{DASHBOARD.name}: panel '{title}' {t.get('refId', '?')}"
            expr = t.get("expr", "")
            allowed = check_expr(where, expr)
            used |= {family_of(n) for n in NAME.findall(expr)}
            for label in LEGEND.findall(t.get("legendFormat", "")):
                if label not in allowed:
                    problem(where, f"legend {{{{{label}}}}}: no series of the query has it")
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        for text in (q, v.get("definition", "")):
            check_expr(f"{DASHBOARD.name}: variable {v.get('name')}", text)
    strings = []
    walk_json(dash, "", strings)
    for path, s in strings:
        check_text_names(f"{DASHBOARD.name}{path}", s)
    for name in sorted(set(FAMILIES) - used):
        problem(DASHBOARD.name, f"{name} is exported but no panel shows it")


def yaml_blocks(text, key):
    """The values of `key:` in a YAML file: a one-line value, or a `|` block's lines."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(rf"^(\s*)(?:- )?{key}:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        if value in ("|", "|-", ">", ">-"):
            body = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            value = "\n".join(body)
        out.append((i + 1, value.strip().strip("'\"")))
    return out


def check_alerts():
    text = ALERTS.read_text()
    rules = re.split(r"\n(?=[ \t]*- alert:)", text)
    count = 0
    for rule in rules[1:]:
        name = re.search(r"- alert:\s*(\S+)", rule).group(1)
        exprs = yaml_blocks(rule, "expr")
        if not exprs:
            problem(f"{ALERTS.name}: {name}", "no expr")
            continue
        count += 1
        where = f"{ALERTS.name}: {name}"
        allowed = check_expr(where, exprs[0][1])
        for label in ANNOTATION_LABEL.findall(rule):
            if label not in allowed:
                problem(where, f"$labels.{label}: the expression's series do not have it")
    if count == 0:
        problem(ALERTS.name, "no alert rules found")
    check_text_names(ALERTS.name, text)


def check_alert_tests():
    text = ALERT_TESTS.read_text()
    for line, series in yaml_blocks(text, "series"):
        where = f"{ALERT_TESTS.name}:{line}"
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(.*)\})?", series)
        if not m:
            problem(where, f"cannot read series {series!r}")
            continue
        name = m.group(1)
        if not name.startswith("pgtenant_"):
            continue
        if name not in SERIES:
            problem(where, f"unknown series {name}")
            continue
        got = {}
        for lm in MATCHER.finditer(m.group(3) or ""):
            got[lm.group(1)] = lm.group(3)
            check_values(where, lm.group(1), "=", lm.group(3))
        want = SERIES[name] | TARGET_LABELS
        if set(got) != want:
            problem(where, f"{name} labels {sorted(got)}, pgtenant exports {sorted(want)}")
    check_text_names(ALERT_TESTS.name, text)


check_dashboard()
check_alerts()
check_alert_tests()
if problems:
    print("\n".join(problems))
    print(f"{len(problems)} problems", file=sys.stderr)
    sys.exit(1)
print(
    f"metric names: {len(FAMILIES)} families; dashboard, alerts.yml and alerts_test.yml "
    "use only exported series, labels and values"
)
