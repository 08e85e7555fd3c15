#!/usr/bin/env python3
"""Runs tests/parity/oracle.py without the datafile features a bucketd build does not decide yet.

    python oracle_subset.py ORACLE_DIR [--no-holdouts] [--no-fr] -- ORACLE ARGS...

--no-holdouts: no `holdouts` / `localHoldouts` sections; --no-fr: every `type: "fr"` becomes
"ab". The oracle itself is unchanged (its generator is wrapped), so the SDK answers what it
answers for the datafiles it is given. tests/parity_cmab.rs passes the flags only when its probes
find the core lacking the feature.
"""
import sys


def main():
    oracle_dir, rest = sys.argv[1], sys.argv[2:]
    split = rest.index("--")
    flags, args = set(rest[:split]), rest[split + 1:]
    sys.path.insert(0, oracle_dir)
    import oracle

    gen = oracle.DatafileGen
    if "--no-holdouts" in flags:
        gen.gen_holdouts = lambda self, df, *a, **k: None
    if "--no-fr" in flags:
        generate = gen.generate

        def without_fr(self, index):
            df = generate(self, index)
            rules = list(df.get("experiments", []))
            for g in df.get("groups", []):
                rules.extend(g.get("experiments", []))
            for r in df.get("rollouts", []):
                rules.extend(r.get("experiments", []))
            for e in rules:
                if e.get("type") == "fr":
                    e["type"] = "ab"
            return df

        gen.generate = without_fr
    return oracle.main(args)


if __name__ == "__main__":
    sys.exit(main())
