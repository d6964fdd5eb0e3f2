"""Compare the metrics of two report.json files: python compare_reports.py OLD NEW"""
import json, math, sys
old, new = (json.load(open(p)) for p in sys.argv[1:3])
def index(r):
    out = {}
    for s in r["sections"]:
        for m in s["metrics"]:
            out[(s["id"], m["name"], m["layer"])] = m["value"]
        out[(s["id"], "__status__", None)] = s["status"]
    return out
a, b = index(old), index(new)
same = diff = 0
for key in sorted(set(a) | set(b), key=str):
    x, y = a.get(key, "MISSING"), b.get(key, "MISSING")
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        ok = x == y or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= 1e-9 * max(1, abs(x), abs(y)))
    else:
        ok = x == y
    if ok: same += 1
    else:
        diff += 1
        print(key, x, "->", y)
print(f"{same} equal, {diff} different")
for r, name in ((old, "old"), (new, "new")):
    print(name, round(r["elapsed_s"], 1), {s["id"]: round(s["elapsed_s"], 1) for s in r["sections"]})
