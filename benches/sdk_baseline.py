#!/usr/bin/env python3
"""Baseline for bucketd's decision benchmark: the official Python SDK on the same datafile.

Usage:
  python benches/sdk_baseline.py --write-fixture   # (re)generate benches/fixtures/realistic.json
  python benches/sdk_baseline.py                   # time the SDK on that fixture

The fixture is a realistic project: 60 experiments (some in a mutually exclusive group), 24
flags with feature tests and 3-rule rollouts, 30 audiences of 3-5 conditions each. The timing
mirrors `cargo bench --bench decisions`: one experiment decision (get_variation: audiences +
bucketing, no user profile, no event) and one decide-all (no events), over the same 1,000 users.
"""
import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "realistic.json")
USERS = os.path.join(HERE, "fixtures", "users.json")

ATTRS = [("country", "str"), ("tier", "str"), ("age", "num"), ("app_version", "ver"),
         ("is_beta", "bool"), ("visits", "num"), ("browser", "str"), ("plan", "str")]
POOLS = {"country": ["us", "uk", "de", "fr", "jp"], "tier": ["gold", "silver", "bronze"],
         "browser": ["chrome", "safari", "firefox"], "plan": ["free", "pro", "enterprise"]}


def leaf(rng):
    name, kind = rng.choice(ATTRS)
    if kind == "str":
        return {"type": "custom_attribute", "name": name, "match": rng.choice(["exact", "substring"]),
                "value": rng.choice(POOLS[name])}
    if kind == "num":
        return {"type": "custom_attribute", "name": name, "match": rng.choice(["gt", "ge", "lt", "le", "exact"]),
                "value": rng.randint(0, 60)}
    if kind == "ver":
        return {"type": "custom_attribute", "name": name, "match": rng.choice(["semver_ge", "semver_lt"]),
                "value": rng.choice(["1.2.0", "2.0", "3.1.4"])}
    return {"type": "custom_attribute", "name": name, "match": "exists"}


def make_datafile(rng):
    ids = iter(range(1000000, 9999999))
    nid = lambda: str(next(ids))
    attributes = [{"id": nid(), "key": k} for k, _ in ATTRS]
    typed = []
    for i in range(30):
        leaves = [leaf(rng) for _ in range(rng.randint(3, 5))]
        typed.append({"id": nid(), "name": f"aud_{i}",
                      "conditions": ["and", ["or"] + leaves[:2], ["or"] + leaves[2:]]})
    aud_ids = [a["id"] for a in typed]

    def experiment(key, variations=3, audiences=True):
        vs = [{"id": nid(), "key": f"v{j}", "featureEnabled": j > 0, "variables": []} for j in range(variations)]
        width = 10000 // variations
        ta = [{"entityId": v["id"], "endOfRange": width * (j + 1)} for j, v in enumerate(vs)]
        ta[-1]["endOfRange"] = 10000
        a = rng.sample(aud_ids, 2) if audiences else []
        return {"id": nid(), "key": key, "status": "Running", "layerId": nid(), "variations": vs,
                "trafficAllocation": ta, "audienceIds": a,
                "audienceConditions": ["or"] + a if a else [], "forcedVariations": {}}

    experiments = [experiment(f"exp_{i}") for i in range(48)]
    group_exps = [experiment(f"grouped_{i}") for i in range(12)]
    group = {"id": nid(), "policy": "random", "experiments": group_exps,
             "trafficAllocation": [{"entityId": e["id"], "endOfRange": 800 * (i + 1)} for i, e in enumerate(group_exps)]}
    flags, rollouts = [], []
    for i in range(24):
        variables = [{"id": nid(), "key": f"var_{t}", "type": t, "defaultValue": d}
                     for t, d in [("string", "x"), ("integer", "1"), ("double", "1.5"), ("boolean", "false")]]
        rules = []
        for r in range(3):
            rule = experiment(f"rule_{i}_{r}", variations=1, audiences=r < 2)
            rule["trafficAllocation"][0]["endOfRange"] = 5000 if r < 2 else 10000
            rules.append(rule)
        rollouts.append({"id": nid(), "experiments": rules})
        tests = [experiments[i * 2]["id"]] if i < 20 else []
        for e in experiments:
            if e["id"] in tests:
                for v in e["variations"]:
                    v["variables"] = [{"id": variables[1]["id"], "value": str(rng.randint(2, 99))}]
        flags.append({"id": nid(), "key": f"flag_{i}", "experimentIds": tests,
                      "rolloutId": rollouts[-1]["id"], "variables": variables})
    return {"version": "4", "accountId": "12345", "projectId": "67890", "revision": "42",
            "anonymizeIP": True, "botFiltering": False, "sendFlagDecisions": True,
            "attributes": attributes, "audiences": [], "typedAudiences": typed,
            "experiments": experiments, "groups": [group], "featureFlags": flags, "rollouts": rollouts,
            "events": [{"id": nid(), "key": "purchase", "experimentIds": []}]}


def make_users(rng, n=1000):
    users = []
    for i in range(n):
        attrs = {"country": rng.choice(POOLS["country"]), "tier": rng.choice(POOLS["tier"]),
                 "age": rng.randint(10, 70), "app_version": rng.choice(["1.0.0", "2.1", "3.1.4", "4.0.0"]),
                 "browser": rng.choice(POOLS["browser"]), "plan": rng.choice(POOLS["plan"]),
                 "visits": rng.randint(0, 50)}
        if rng.random() < 0.5:
            attrs["is_beta"] = rng.random() < 0.5
        users.append({"user_id": f"user-{i}-{rng.randint(0, 10**9)}", "attributes": attrs})
    return users


def bench(datafile, users):
    import logging
    from optimizely import optimizely, logger as opt_logger
    from optimizely.decision.optimizely_decide_option import OptimizelyDecideOption as O
    client = optimizely.Optimizely(datafile=json.dumps(datafile), logger=opt_logger.NoOpLogger())
    exp_key = "exp_1"
    def timed(fn, rounds):
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best
    get_var = timed(lambda: [client.get_variation(exp_key, u["user_id"], u["attributes"]) for u in users], 5)
    # 200 users on the fixture; fewer on a big datafile (decide-all grows with the flags).
    n = max(10, min(200, 4800 // max(1, len(datafile["featureFlags"]))))
    ctxs = [client.create_user_context(u["user_id"], u["attributes"]) for u in users[:n]]
    opts = [O.DISABLE_DECISION_EVENT]
    decide_all = timed(lambda: [c.decide_all(opts) for c in ctxs], 3)
    client.close()
    return {"experiment_decision_ns": get_var / len(users) * 1e9,
            "decide_all_ns": decide_all / len(ctxs) * 1e9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-fixture", action="store_true")
    ap.add_argument("--datafile", help="time decide-all on this datafile instead (same users)")
    args = ap.parse_args()
    if args.write_fixture:
        rng = random.Random(7)
        with open(FIXTURE, "w") as f:
            json.dump(make_datafile(rng), f, indent=1)
        with open(USERS, "w") as f:
            json.dump(make_users(rng), f)
        print(f"wrote {FIXTURE} and {USERS}")
        return
    with open(args.datafile or FIXTURE) as f:
        datafile = json.load(f)
    with open(USERS) as f:
        users = json.load(f)
    r = bench(datafile, users)
    print(json.dumps(r))
    print(f"python-sdk experiment decision: {r['experiment_decision_ns']:.0f} ns; "
          f"decide-all ({len(datafile['featureFlags'])} flags): {r['decide_all_ns']:.0f} ns", file=sys.stderr)


if __name__ == "__main__":
    main()
