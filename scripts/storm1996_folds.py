"""Summarises scripts/storm1996_folds.sh: per fold and seed, and pooled over them
(RMSE = sqrt of the forecast-weighted mean of squared RMSEs), the 24 h RMSE of the
base, the one-step continuation ("one"), the rollout fine-tune ("roll") and
persistence, and whether every model beats persistence at every lead up to 24 h.
    python3 scripts/storm1996_folds.py OUT_DIR [LEAD_HOURS]
"""
import collections
import glob
import json
import math
import sys

KINDS = ["base", "one", "roll"]


def load(out_dir):
    """{fold+seed: {kind or 'pers': {(channel, lead): (rmse, forecasts)}}}"""
    runs = collections.defaultdict(dict)
    for path in sorted(glob.glob(f"{out_dir}/eval_*.json")):
        fold_seed, kind = path.split("eval_")[1][:-5].split("-")
        report = json.load(open(path))
        n = len(report["initial_times"])
        for r in report["records"]:
            if r["metric"] != "rmse" or r["system"] not in ("model", "persistence"):
                continue
            who = kind if r["system"] == "model" else "pers"
            runs[fold_seed].setdefault(who, {})[(r["channel"], r["lead_hours"])] = (r["value"], n)
    return {fs: v for fs, v in runs.items() if all(k in v for k in KINDS)}


def pooled(runs, who, key):
    parts = [runs[fs][who][key] for fs in runs]
    return math.sqrt(sum(v * v * n for v, n in parts) / sum(n for _, n in parts))


def main():
    out_dir, lead = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 24.0
    runs = load(out_dir)
    some = next(iter(runs.values()))["base"]
    channels = list(dict.fromkeys(c for c, _ in some))
    leads = sorted({l for _, l in some if l <= lead})
    print(f"{lead:g} h RMSE; {len(runs)} fold-seeds: {' '.join(sorted(runs))}")
    print(f"{'':10}" + "".join(f"{c:>10}" for c in channels))
    for fs in sorted(runs):
        for who in KINDS + ["pers"]:
            row = "".join(f"{runs[fs][who][(c, lead)][0]:10.3f}" for c in channels)
            print(f"{fs:4}{who:6}{row}")
    print("pooled")
    table = {who: [pooled(runs, who, (c, lead)) for c in channels] for who in KINDS + ["pers"]}
    for who, row in table.items():
        print(f"{who:10}" + "".join(f"{v:10.3f}" for v in row))
    for a, b in [("roll", "one"), ("roll", "base"), ("one", "base")]:
        print(f"{a}/{b:5}" + "".join(f"{x / y:10.3f}" for x, y in zip(table[a], table[b])))
    wins = [sum(runs[fs]["roll"][(c, lead)][0] < runs[fs]["one"][(c, lead)][0] for fs in runs) for c in channels]
    print("roll<one " + "".join(f"{w:>7}/{len(runs)}" for w in wins))
    for who in KINDS:
        losing = [f"{fs} {c} {l:g}h" for fs in sorted(runs) for c in channels for l in leads
                  if runs[fs][who][(c, l)][0] >= runs[fs]["pers"][(c, l)][0]]
        print(f"{who}: not below persistence in {len(losing)} of "
              f"{len(runs) * len(channels) * len(leads)} (fold-seed, variable, lead): {', '.join(losing[:12])}"
              + (" ..." if len(losing) > 12 else ""))


main()
