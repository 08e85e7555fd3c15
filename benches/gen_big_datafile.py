#!/usr/bin/env python3
"""A deterministic ~1 MiB datafile with 1,000 flags, for the big-datafile benchmarks.

Usage: python3 benches/gen_big_datafile.py OUT.json [--flags 1000]

It starts from the bundled example project (examples/datafile.json, so the benchmarks' usual
`/bucketer?e=checkout_flow_experiment` and `/v1/decide?keys=new_checkout` calls still work)
and adds N flags built like benches/sdk_baseline.py's realistic fixture: every flag has four
typed variables and a 2-rule rollout (an audience-targeted 50 % rule, then everyone); every
tenth flag also runs a 3-variation A/B test whose variations override two variables; 60
audiences of 3-5 conditions. The same seed always writes the same bytes.
"""
import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sdk_baseline import ATTRS, leaf  # noqa: E402  (the shared condition generator)

BUNDLED = os.path.join(HERE, "..", "examples", "datafile.json")


def build(flags, rng):
    with open(BUNDLED) as f:
        d = json.load(f)
    ids = iter(range(100000000, 999999999))
    nid = lambda: str(next(ids))
    known = {a["key"] for a in d["attributes"]}
    for k, _ in ATTRS:
        if k not in known:
            d["attributes"].append({"id": nid(), "key": k})
    audiences = []
    for i in range(60):
        leaves = [leaf(rng) for _ in range(rng.randint(3, 5))]
        audiences.append({"id": nid(), "name": f"big_aud_{i}",
                          "conditions": ["and", ["or"] + leaves[:2], ["or"] + leaves[2:]]})
    d.setdefault("typedAudiences", []).extend(audiences)
    aud_ids = [a["id"] for a in audiences]

    def rule(key, variations, audience, traffic, variables):
        vs = []
        for j in range(variations):
            vv = [{"id": v["id"], "value": str(rng.randint(2, 999)) if v["type"] != "string"
                   else f"value-{rng.randint(0, 10**6)}"} for v in variables[:2]] if variations > 1 else []
            vs.append({"id": nid(), "key": f"{key}_v{j}", "featureEnabled": j > 0 or variations == 1,
                       "variables": vv})
        width = traffic // variations
        ta = [{"entityId": v["id"], "endOfRange": width * (j + 1)} for j, v in enumerate(vs)]
        ta[-1]["endOfRange"] = traffic
        a = [audience] if audience else []
        return {"id": nid(), "key": key, "status": "Running", "layerId": nid(), "variations": vs,
                "trafficAllocation": ta, "audienceIds": a,
                "audienceConditions": ["or"] + a if a else [], "forcedVariations": {}}

    for i in range(flags):
        variables = [
            {"id": nid(), "key": "title", "type": "string", "defaultValue": f"Title {i}"},
            {"id": nid(), "key": "limit", "type": "integer", "defaultValue": str(rng.randint(1, 100))},
            {"id": nid(), "key": "ratio", "type": "double", "defaultValue": "0.5"},
            {"id": nid(), "key": "on", "type": "boolean", "defaultValue": "false"},
        ]
        rules = [rule(f"b{i}_t", 1, rng.choice(aud_ids), 5000, variables),
                 rule(f"b{i}_e", 1, None, 10000, variables)]
        rollout = {"id": nid(), "experiments": rules}
        d["rollouts"].append(rollout)
        tests = []
        if i % 10 == 0:
            e = rule(f"big_{i}_test", 3, rng.choice(aud_ids), 10000, variables)
            d["experiments"].append(e)
            tests.append(e["id"])
        d["featureFlags"].append({"id": nid(), "key": f"big_flag_{i}", "experimentIds": tests,
                                  "rolloutId": rollout["id"], "variables": variables})
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--flags", type=int, default=1000)
    args = ap.parse_args()
    d = build(args.flags, random.Random(13))
    text = json.dumps(d, separators=(",", ":"))
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}: {len(d['featureFlags'])} flags, {len(text) / 1048576:.2f} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
