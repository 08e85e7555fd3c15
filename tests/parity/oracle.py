#!/usr/bin/env python3
"""Differential-parity oracle for bucketd.

Generates random Optimizely datafiles and users, runs every user through the
official Optimizely Python SDK, and writes one JSON file with the datafiles,
the inputs and the SDK's outputs (decisions, variations, dispatched events,
saved user profiles).

    python tests/parity/oracle.py --seed S --datafiles N --users M --out FILE.json

Only the standard library and the `optimizely` package (optimizely-sdk) are
used. See README.md next to this file for the output schema.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import sys
import time
from collections import Counter

from optimizely import optimizely as optimizely_sdk
from optimizely import logger as sdk_logger
from optimizely.cmab.cmab_client import CmabRetryConfig
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.helpers.sdk_settings import OptimizelySdkSettings
from optimizely.optimizely_user_context import OptimizelyUserContext
from optimizely.version import __version__ as SDK_VERSION

EXPECTED_SDK_VERSION = "5.7.0"

# Decide options the generator draws from (INCLUDE_REASONS is added to some
# calls but never recorded; it only affects the `reasons` field).
RECORDED_DECIDE_OPTIONS = [
    "DISABLE_DECISION_EVENT",
    "ENABLED_FLAGS_ONLY",
    "IGNORE_USER_PROFILE_SERVICE",
    "EXCLUDE_VARIABLES",
]
INCLUDE_REASONS = "INCLUDE_REASONS"
# Only with --cmab (bucketd's replay does not know them yet).
CMAB_DECIDE_OPTIONS = ["IGNORE_CMAB_CACHE", "RESET_CMAB_CACHE", "INVALIDATE_USER_CMAB_CACHE"]
# The oracle's CMAB request timeout (the SDK's default is 10 s) and how long the
# prediction server holds back a "timeout" answer; and the SDK's first retry backoff
# (default 0.1 s). Neither changes an answer, only how long a run takes.
CMAB_TIMEOUT = 0.5
CMAB_SERVER_DELAY = 1.5
CMAB_INITIAL_BACKOFF = 0.001

# ---------------------------------------------------------------------------
# Value pools. Conditions and user attributes draw from the same pools so that
# audiences actually match a reasonable fraction of users.
# ---------------------------------------------------------------------------

NUM_POOL = [0, 1, 5, 17, 18, 18.0, 21, 30.5, 42, 65, 99.99, -3, -0.5, 1000000,
            2 ** 53, -(2 ** 53), 3.0, 0.1, 7]
BIG_NUM_POOL = [2 ** 53 + 1, -(2 ** 53) - 1, 2 ** 60, -(2 ** 60), 2 ** 63, 1e20, -1e300]
STR_POOL = ["us", "US", "uk", "de", "", "premium", "free", "gold-plus", "ünïcödé",
            "日本語", "🎉 party", "chrome", "firefox", "safari mobile", "a", "123", "true"]
SUBSTR_POOL = ["prem", "fire", "日本", "", "🎉", "a", "US", "mobile", "ü", "x"]
SEMVER_POOL = ["1.2.3", "2", "1.2.3-beta.1", "1.2.3+build", "1.2", "1.2.3-beta",
               "1.2.3-alpha", "2.0.0", "1.10.0", "0.9.9", "1.2.4", "1.2.3-beta.1+build.7",
               "1.2.3.4", "a.b.c", "1..2", "", " 1.2.3", "01.2.3", "1.2.3-2", "3",
               "1.2.3-rc.1", "10.0"]
SEGMENT_POOL = ["seg_a", "seg_b", "seg_c", "ünï_seg"]
WILD_VALUES = ["18", True, False, None, [1, 2], {"a": 1}, 1.5, "true", 0, "1.2.3",
               -7, "", ["x"], {}]

# (key, kind). A datafile declares a random subset; conditions may also use
# attributes that are not declared ("ghost" attributes).
ATTR_SPECS = [
    ("age", "num"), ("score", "num"), ("visits", "num"),
    ("country", "str"), ("plan", "str"), ("browser", "str"), ("ünï_attr", "str"),
    ("is_beta", "bool"), ("app_version", "semver"), ("os_version", "semver"),
]
GHOST_ATTR_SPECS = [("tier", "str"), ("level", "num"), ("$opt_custom", "str")]
RESERVED_DF_ATTR_SPECS = [("$opt_flag", "str")]
# Per-attribute string pools (small, so exact matches happen); STR_POOL is the
# fallback / "anything" pool.
STR_POOLS = {
    "country": ["us", "US", "uk", "日本語", ""],
    "plan": ["premium", "free", "gold-plus"],
    "browser": ["chrome", "firefox", "safari mobile"],
    "ünï_attr": ["ünïcödé", "🎉 party", "a"],
    "tier": ["gold", "silver"],
    "$opt_custom": ["x", "y"],
    "$opt_flag": ["on", "off"],
}

MATCHES_BY_KIND = {
    "num": ["exact", "gt", "ge", "lt", "le", "exists", "gt", "lt"],
    "str": ["exact", "substring", "exists", None, "exact"],
    "bool": ["exact", "exists", None],
    "semver": ["semver_eq", "semver_gt", "semver_ge", "semver_lt", "semver_le", "exact"],
}
UNKNOWN_MATCHES = ["regex", "between", "EXACT"]

VAR_VALUES = {
    "string": ["hello", "", "ünï 🎉", "with \"quotes\"", "42"],
    "integer": ["0", "42", "-7", "2147483647", "-100000"],
    "double": ["3.14", "0", "-1e3", "10", "0.5", "-2.25"],
    "boolean": ["true", "false"],
    "json": ['{"a":1,"b":[true,null]}', "{}", '{"nested":{"k":"v","n":1.5}}', "[1,2,3]",
             '{"s":"ünï"}'],
}
BAD_VAR_VALUES = {
    "string": [],
    "integer": ["4.2", "abc", ""],
    "double": ["x", ""],
    "boolean": ["TRUE", "1", "yes"],
    "json": ["{bad", ""],
}

STATUSES = ["Running"] * 12 + ["Paused", "Not started", "Launched", "Archived"]

# Experiment `type` values. The SDK branches on exactly two of them: "fr" (a
# flag's experimentIds rule gets the flag's "Everyone Else" variation appended)
# and "td" (the only experiments evaluated when a global holdout with
# excludeTargetedDeliveries holds the user). Everything else, including JSON
# null, "cmab" without a `cmab` block, and near misses such as
# "feature_rollout" or "FR", must behave like an absent type.
_ABSENT = object()
UNKNOWN_TYPES = ["feature_rollout", "FR", "TD", "", "personalization", "targeted_delivery", None]
TYPE_WEIGHTS = {
    # kind: [(type, weight)]
    "plain": [(_ABSENT, 40), ("ab", 30), ("mab", 6), ("td", 6), ("fr", 6), ("cmab", 3), ("?", 9)],
    "feature": [(_ABSENT, 20), ("ab", 16), ("mab", 4), ("td", 22), ("fr", 28), ("cmab", 2), ("?", 8)],
    "rule": [(_ABSENT, 45), ("td", 15), ("fr", 12), ("ab", 5), ("?", 23)],
}
HOLDOUT_STATUSES = ["Running"] * 16 + ["Draft", "Concluded", "Archived", "Paused", "running"]


class SilentLogger(sdk_logger.BaseLogger):
    """No-op logger (cheaper than the SDK's NoOpLogger, which routes through logging)."""

    @staticmethod
    def critical(*args):
        pass


class CountingLogger(SilentLogger):
    """Silent logger that counts the SDK's error and exception messages (by shape)."""

    _shape = re.compile(r'"[^"]*"|\'[^\']*\'|\d+')

    def __init__(self, counter):
        self.counter = counter

    def error(self, *args):
        self.counter["sdk_error_log:" + self._shape.sub("_", str(args[0]) if args else "")[:80]] += 1

    def exception(self, *args):
        self.counter["sdk_exception_log:" + self._shape.sub("_", str(args[0]) if args else "")[:80]] += 1


class CapturingDispatcher:
    """Event dispatcher recording every LogEvent; reset per call."""

    def __init__(self):
        self.events = []

    def dispatch_event(self, log_event):
        self.events.append({
            "url": log_event.url,
            "http_verb": log_event.http_verb,
            "params": log_event.params,
        })

    def take(self):
        out = self.events
        self.events = []
        return out


class InMemoryProfileService:
    """User profile service holding one user's profile; re-armed per user."""

    def __init__(self):
        self.current = None
        self.saves = []

    def reset(self, initial):
        self.current = copy.deepcopy(initial)
        self.saves = []

    def lookup(self, user_id):
        # Hand out a copy: the SDK mutates the experiment_bucket_map it gets.
        return copy.deepcopy(self.current)

    def save(self, user_profile):
        snap = copy.deepcopy(dict(user_profile))
        self.saves.append(snap)
        self.current = copy.deepcopy(snap)


# ---------------------------------------------------------------------------
# Datafile generation
# ---------------------------------------------------------------------------

def unwrap_singleton_lists(tree):
    """Replace [[...]] (a one-element list holding a list) by its element.

    The SDK's OptimizelyConfig builder raises TypeError while constructing the
    client when an experiment's audienceConditions contains such a node, so the
    generator must not emit it there.
    """
    if not isinstance(tree, list):
        return tree
    while len(tree) == 1 and isinstance(tree[0], list):
        tree = tree[0]
    return [unwrap_singleton_lists(t) for t in tree]


class DatafileGen:
    def __init__(self, rng: random.Random, stats: Counter, cmab_rng: random.Random | None = None):
        self.rng = rng
        self.stats = stats
        self._next_id = rng.randrange(1000, 90000) * 100
        self.exp_keys_used = set()
        # CMAB additions (--cmab) draw only from their own generator, so that everything
        # else in the datafile, and the draws without --cmab, stay the same.
        self.cmab_rng = cmab_rng

    # -- ids / keys ---------------------------------------------------------
    def nid(self):
        self._next_id += self.rng.randrange(1, 50)
        return str(self._next_id)

    def var_id(self):
        # Mostly numeric; sometimes opaque (the event normaliser turns
        # non-numeric variation ids into null).
        if self.rng.random() < 0.06:
            return "var_" + self.nid()
        return self.nid()

    def layer_id(self):
        r = self.rng.random()
        if r < 0.06:
            return ""
        if r < 0.10:
            return "layer_" + self.nid()
        return self.nid()

    def exp_key(self, prefix):
        while True:
            k = "%s_%d" % (prefix, self.rng.randrange(10000))
            if k not in self.exp_keys_used:
                self.exp_keys_used.add(k)
                return k

    # -- conditions ---------------------------------------------------------
    def wrong_condition_value(self, kind):
        if kind == "num":
            return self.rng.choice(["18", True, None, [1], 2 ** 53 + 2, 1e300, {"v": 1}])
        if kind == "str":
            return self.rng.choice([5, True, None, 1.5, ["us"]])
        if kind == "bool":
            return self.rng.choice(["true", 1, 0, None])
        return self.rng.choice([1.2, 2, None, True])

    def good_condition_value(self, name, kind, match):
        rng = self.rng
        if kind == "num":
            return rng.choice(NUM_POOL)
        if kind == "str":
            if match == "substring":
                pool = [v[:rng.randint(0, len(v))] for v in STR_POOLS.get(name, STR_POOL)]
                return rng.choice(pool + SUBSTR_POOL[:3])
            return rng.choice(STR_POOLS.get(name, STR_POOL) if rng.random() < 0.9 else STR_POOL)
        if kind == "bool":
            return rng.choice([True, False])
        return rng.choice(SEMVER_POOL)

    def gen_leaf(self):
        rng = self.rng
        if rng.random() < 0.10:
            # ODP segment condition
            leaf = {
                "type": rng.choice(["third_party_dimension"] * 4 + ["custom_attribute"]),
                "name": "odp.audiences",
                "match": "qualified",
                "value": rng.choice(SEGMENT_POOL) if rng.random() < 0.9 else rng.choice([1, None, True]),
            }
            self.stats["match:qualified"] += 1
            return leaf
        if rng.random() < 0.1 or not self.attr_specs:
            name, kind = rng.choice(GHOST_ATTR_SPECS)
        else:
            name, kind = rng.choice(self.attr_specs)
        match = rng.choice(MATCHES_BY_KIND[kind])
        if rng.random() < 0.04:
            match = rng.choice(UNKNOWN_MATCHES)
        elif rng.random() < 0.04:
            # cross-kind match (e.g. gt on a string attribute)
            match = rng.choice(["gt", "le", "substring", "semver_ge", "exact", "qualified"])
        if rng.random() < 0.08:
            value = self.wrong_condition_value(kind)
        else:
            value = self.good_condition_value(name, kind, match)
        ctype = "custom_attribute"
        r = rng.random()
        if r < 0.03:
            ctype = "custom_dimension"  # unknown condition type
        elif r < 0.05:
            ctype = "third_party_dimension"
        leaf = {"name": name, "type": ctype}
        if match is not None:
            leaf["match"] = match
        if match == "exists" and rng.random() < 0.4:
            pass  # exists conditions often carry no value
        else:
            leaf["value"] = value
        self.stats["match:%s" % (match if match is not None else "<missing>")] += 1
        if ctype != "custom_attribute":
            self.stats["condtype:%s" % ctype] += 1
        return leaf

    def gen_tree(self, leaf_fn, depth=0, max_depth=4, leaf_prob=0.55):
        rng = self.rng
        if depth >= max_depth or (depth > 0 and rng.random() < leaf_prob):
            return leaf_fn()
        op = rng.choice(["and", "or", "not", None, "or", "or"])
        if op == "not":
            n = 1 if rng.random() < 0.9 else 2
        elif op == "and":
            n = rng.randint(1, 2)
        else:
            n = rng.randint(1, 3)
        if op is not None and rng.random() < 0.02:
            n = 0  # operator with no operands: ["and"] / ["or"] / ["not"]
        children = [self.gen_tree(leaf_fn, depth + 1, max_depth, leaf_prob) for _ in range(n)]
        if op is None:
            self.stats["tree:bare_list"] += 1
            return children
        self.stats["tree:" + op] += 1
        return [op] + children

    # -- audiences ----------------------------------------------------------
    def gen_audiences(self):
        rng = self.rng
        legacy, typed = [], []
        for i in range(rng.randint(2, 8)):
            aid = self.nid()
            tree = self.gen_tree(self.gen_leaf)
            if not isinstance(tree, list):
                tree = ["or", tree]
            if rng.random() < 0.5:
                tree = ["and", ["or", tree]]  # legacy shape
            legacy.append({"id": aid, "name": "aud %d" % i, "conditions": json.dumps(tree)})
        for i in range(rng.randint(0, 5)):
            aid = self.nid()
            if rng.random() < 0.15:
                tree = self.gen_leaf()  # bare leaf condition
            else:
                tree = self.gen_tree(self.gen_leaf)
                if not isinstance(tree, list):
                    tree = ["and", tree]
            typed.append({"id": aid, "name": "typed aud %d" % i, "conditions": tree})
            if rng.random() < 0.5:
                # Same id in the legacy list: the typed audience must win.
                self.stats["datafile:typed_audience_overrides_legacy"] += 1
                legacy.append({
                    "id": aid, "name": "typed aud %d" % i,
                    "conditions": json.dumps(["or", {"match": "exact", "name": "$opt_dummy_attribute",
                                                     "type": "custom_attribute",
                                                     "value": "$opt_dummy_value"}]),
                })
        rng.shuffle(legacy)
        return legacy, typed

    def gen_audience_targeting(self, entity):
        """Set audienceIds and maybe audienceConditions on an experiment/rule."""
        rng = self.rng
        ids = [a["id"] for a in self.all_audiences]
        r = rng.random()
        if r < 0.25 or not ids:
            entity["audienceIds"] = []
        else:
            k = rng.randint(1, min(3, len(ids)))
            entity["audienceIds"] = rng.sample(ids, k)
            if rng.random() < 0.08:
                entity["audienceIds"].append("404404")  # unknown audience id
        if rng.random() < 0.4 and ids:
            def leaf():
                return rng.choice(ids) if rng.random() < 0.93 else "505505"
            s = rng.random()
            if s < 0.15:
                cond = [leaf() for _ in range(rng.randint(1, 3))]  # bare id list => OR
                self.stats["audienceConditions:bare_list"] += 1
            elif s < 0.22:
                cond = []
                self.stats["audienceConditions:empty"] += 1
            else:
                cond = unwrap_singleton_lists(self.gen_tree(leaf, max_depth=3, leaf_prob=0.6))
                if not isinstance(cond, list):
                    cond = ["or", cond]
                self.stats["audienceConditions:tree"] += 1
            entity["audienceConditions"] = cond

    # -- traffic ------------------------------------------------------------
    def gen_traffic(self, entity_ids, kind_prefix="traffic"):
        rng = self.rng
        if not entity_ids:
            return []
        style = rng.choices(["full", "partial", "gaps", "unknown", "zero", "shuffled"],
                            weights=[50, 18, 15, 5, 8, 4])[0]
        self.stats["%s:%s" % (kind_prefix, style)] += 1
        total = 10000 if style not in ("partial",) else rng.randint(500, 9999)
        ids = list(entity_ids)
        if style == "zero" and len(ids) > 1:
            ids.remove(rng.choice(ids))  # one entity gets no traffic at all
        weights = [rng.random() + 0.05 for _ in ids]
        sw = sum(weights)
        out, acc = [], 0
        for i, (eid, w) in enumerate(zip(ids, weights)):
            if style == "gaps" and rng.random() < 0.5:
                acc += rng.randint(1, max(1, total // (len(ids) * 3)))
                out.append({"entityId": "", "endOfRange": min(acc, total)})
            acc += int(total * w / sw)
            end = total if i == len(ids) - 1 else min(acc, total)
            out.append({"entityId": eid, "endOfRange": end})
        if style == "unknown":
            out[rng.randrange(len(out))]["entityId"] = "999999"
        if style == "shuffled":
            rng.shuffle(out)
        if style == "zero" and rng.random() < 0.5:
            out.insert(0, {"entityId": ids[0], "endOfRange": 0})
        return out

    # -- variations ---------------------------------------------------------
    def gen_var_value(self, vtype):
        rng = self.rng
        if BAD_VAR_VALUES[vtype] and rng.random() < 0.06:
            self.stats["variable:bad_value"] += 1
            return rng.choice(BAD_VAR_VALUES[vtype])
        return rng.choice(VAR_VALUES[vtype])

    def gen_variations(self, n, variables, feature=True, keys=None):
        rng = self.rng
        out = []
        for i in range(n):
            v = {"id": self.var_id(), "key": keys[i] if keys else "var_%d" % i}
            if feature or rng.random() < 0.5:
                if feature and rng.random() < 0.04:
                    pass  # featureEnabled missing => false
                else:
                    v["featureEnabled"] = rng.random() < (0.7 if feature else 0.5)
            vs = []
            if variables and rng.random() < 0.75:
                for var in variables:
                    if rng.random() < 0.6:
                        vs.append({"id": var["id"], "value": self.gen_var_value(var["_t"])})
                if rng.random() < 0.05:
                    vs.append({"id": "777777", "value": "orphan"})
            v["variables"] = vs
            out.append(v)
        return out

    def gen_type(self, entity, kind):
        """Maybe set `type` on an experiment or rollout rule (see TYPE_WEIGHTS)."""
        rng = self.rng
        choices, weights = zip(*TYPE_WEIGHTS[kind])
        t = rng.choices(choices, weights=weights)[0]
        if t is _ABSENT:
            self.stats["type:%s:absent" % kind] += 1
            return None
        if t == "?":
            t = rng.choice(UNKNOWN_TYPES)
            self.stats["type:%s:unknown" % kind] += 1
        else:
            self.stats["type:%s:%s" % (kind, t)] += 1
        entity["type"] = t
        return t

    def gen_experiment(self, key_prefix, variables=None, feature=False, kind=None):
        rng = self.rng
        exp = {
            "id": self.nid(),
            "key": self.exp_key(key_prefix),
            "layerId": self.layer_id(),
            "status": rng.choice(STATUSES),
        }
        self.gen_type(exp, kind or ("feature" if feature else "plain"))
        self.gen_audience_targeting(exp)
        nvar = rng.choices([1, 2, 3, 4], weights=[15, 45, 25, 15])[0]
        keys = None
        if feature and rng.random() < 0.3:
            keys = rng.sample(["on", "off", "control", "treatment", "variation_1"], nvar) \
                if nvar <= 5 else None
        exp["variations"] = self.gen_variations(nvar, variables, feature=feature, keys=keys)
        exp["trafficAllocation"] = self.gen_traffic([v["id"] for v in exp["variations"]])
        fv = {}
        if rng.random() < 0.3:
            for uid in rng.sample(self.whitelist_ids, rng.randint(1, 3)):
                if rng.random() < 0.85:
                    fv[uid] = rng.choice(exp["variations"])["key"]
                else:
                    fv[uid] = "no_such_variation"
                    self.stats["whitelist:bad_variation"] += 1
            self.stats["whitelist:experiments"] += 1
        exp["forcedVariations"] = fv
        return exp

    # -- flags / rollouts ---------------------------------------------------
    def gen_variables(self):
        rng = self.rng
        out = []
        for i in range(rng.choices([0, 1, 2, 3, 4, 5], weights=[10, 15, 25, 25, 15, 10])[0]):
            t = rng.choice(["string", "integer", "double", "boolean", "json", "json_sub"])
            var = {"id": self.nid(), "key": "var_%s_%d" % (t, i)}
            if t == "json_sub":
                var["type"] = "string"
                var["subType"] = "json"
                t = "json"
                self.stats["variable:string+subType:json"] += 1
            else:
                var["type"] = t
            var["defaultValue"] = self.gen_var_value(t)
            var["_t"] = t
            out.append(var)
        return out

    def gen_rollout(self, variables, flag_idx):
        rng = self.rng
        rid = self.nid()
        rules = []
        nrules = rng.choices([0, 1, 2, 3, 4], weights=[3, 30, 30, 22, 15])[0]
        shared_on = None
        for r in range(nrules):
            last = r == nrules - 1
            if last:
                key = rng.choice([None, "everyone_else_%d_%d" % (flag_idx, rng.randrange(1000))])
                rule = {"id": self.nid()}
                rule["key"] = key if key is not None else rule["id"]
                if rule["key"] in self.exp_keys_used:
                    rule["key"] = self.exp_key("ee")
                self.exp_keys_used.add(rule["key"])
            else:
                rule = {"id": self.nid(), "key": self.exp_key("rule")}
            rule["status"] = rng.choice(["Running"] * 8 + ["Paused", "Archived"])
            rule["layerId"] = rid
            self.gen_type(rule, "rule")
            if last:
                rule["audienceIds"] = []
            else:
                self.gen_audience_targeting(rule)
            nvar = 1 if rng.random() < 0.85 else 2
            vars_ = self.gen_variations(nvar, variables, feature=True,
                                        keys=["on", "off"][:nvar] if rng.random() < 0.6 else None)
            if shared_on is not None and rng.random() < 0.4:
                vars_[0] = copy.deepcopy(shared_on)  # same variation id reused across rules
                self.stats["rollout:shared_variation_id"] += 1
            elif shared_on is None:
                shared_on = copy.deepcopy(vars_[0])
            if last and rng.random() < 0.03:
                vars_ = []  # "Everyone Else" without variations: nothing to inject into fr rules
                self.stats["rollout:everyone_else_without_variations"] += 1
            rule["variations"] = vars_
            ids = [v["id"] for v in vars_]
            if not ids:
                rule["trafficAllocation"] = []
            elif last and rng.random() < 0.6:
                rule["trafficAllocation"] = [{"entityId": ids[0], "endOfRange": 10000}]
            elif rng.random() < 0.7:
                rule["trafficAllocation"] = [{"entityId": ids[0], "endOfRange": rng.randint(0, 10000)}]
                self.stats["traffic:rollout_partial"] += 1
            else:
                rule["trafficAllocation"] = self.gen_traffic(ids)
            rule["forcedVariations"] = {}
            rules.append(rule)
        return {"id": rid, "experiments": rules}

    # -- holdouts -----------------------------------------------------------
    def gen_holdout_variations(self, variables, known_var_ids):
        """Holdout variations. The SDK keeps them as plain dicts and never registers their
        `variables`, so a holdout serving featureEnabled=true yields null-cast variables
        (unless its variation id is also a rule variation's id)."""
        rng = self.rng
        st = self.stats
        n = rng.choices([1, 2, 0], weights=[80, 12, 8])[0]
        if n == 0:
            st["holdout:no_variations"] += 1
        out = []
        keys = rng.sample(["off", "holdout_off", "control", "on", "ho_a"], n)
        for i in range(n):
            r = rng.random()
            if r < 0.08:
                vid = "var_" + self.nid()  # opaque: the impression carries variation_id null
                st["holdout:opaque_variation_id"] += 1
            elif r < 0.14 and known_var_ids:
                vid = rng.choice(known_var_ids)  # shared with a rule variation
                st["holdout:shared_variation_id"] += 1
            else:
                vid = self.nid()
            v = {"id": vid, "key": keys[i]}
            r = rng.random()
            if r < 0.55:
                v["featureEnabled"] = False
            elif r < 0.85:
                v["featureEnabled"] = True
                st["holdout:variation_enabled"] += 1
            else:
                st["holdout:variation_featureEnabled_absent"] += 1
            r = rng.random()
            if r < 0.45:
                v["variables"] = []
            elif r < 0.6:
                pass  # no "variables" key
            else:
                v["variables"] = [{"id": var["id"], "value": self.gen_var_value(var["_t"])}
                                  for var in variables if rng.random() < 0.6]
                st["holdout:variation_with_variables"] += 1
            out.append(v)
        return out

    def gen_holdout(self, variables, known_var_ids):
        rng = self.rng
        st = self.stats
        ho = {
            "id": self.nid(),
            "key": self.exp_key("holdout"),
            "status": rng.choice(HOLDOUT_STATUSES),
        }
        st["holdout:status_%s" % ho["status"]] += 1
        if rng.random() < 0.5:
            ho["audienceIds"] = []
        else:
            self.gen_audience_targeting(ho)
            st["holdout:with_audiences"] += 1
        ho["variations"] = self.gen_holdout_variations(variables, known_var_ids)
        ids = [v["id"] for v in ho["variations"]]
        r = rng.random()
        if not ids:
            ho["trafficAllocation"] = [] if rng.random() < 0.5 else \
                [{"entityId": self.nid(), "endOfRange": 5000}]
        elif r < 0.62:
            ho["trafficAllocation"] = [{"entityId": ids[0], "endOfRange": rng.randint(500, 4500)}]
            st["holdout_traffic:partial"] += 1
        elif r < 0.68:
            ho["trafficAllocation"] = [{"entityId": ids[0], "endOfRange": 10000}]
            st["holdout_traffic:full"] += 1
        elif r < 0.70:
            ho["trafficAllocation"] = [{"entityId": ids[0], "endOfRange": 0}]
            st["holdout_traffic:zero"] += 1
        elif r < 0.73:
            ho["trafficAllocation"] = []
            st["holdout_traffic:empty"] += 1
        else:
            ho["trafficAllocation"] = self.gen_traffic(ids, "holdout_traffic")
        r = rng.random()
        if r < 0.45:
            ho["excludeTargetedDeliveries"] = True
        elif r < 0.62:
            ho["excludeTargetedDeliveries"] = False
        if rng.random() < 0.1:
            # Fields of older holdout schemas and of experiments: ignored by the SDK.
            ho["layerId"] = rng.choice(["", self.nid()])
            ho["includedFlags"] = []
            ho["excludedFlags"] = []
            st["holdout:extra_fields"] += 1
        return ho

    def gen_holdouts(self, df, flags, rollouts, experiments, groups):
        """Top-level `holdouts` (global) and `localHoldouts` (rule-scoped)."""
        rng = self.rng
        st = self.stats
        variables = [var for f in flags for var in f["_vars"]]
        all_exps = experiments + [e for g in groups for e in g["experiments"]]
        flag_exp_ids = [i for f in flags for i in f["experimentIds"]]
        rule_ids = [r["id"] for ro in rollouts for r in ro["experiments"]]
        plain_ids = [e["id"] for e in all_exps if e["id"] not in flag_exp_ids]
        known_var_ids = [v["id"] for e in all_exps for v in e["variations"]] + \
            [v["id"] for ro in rollouts for r in ro["experiments"] for v in r["variations"]]

        def some_rule_ids():
            out = []
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                if r < 0.45 and flag_exp_ids:
                    out.append(rng.choice(flag_exp_ids))
                elif r < 0.85 and rule_ids:
                    out.append(rng.choice(rule_ids))
                elif r < 0.93 and plain_ids:
                    out.append(rng.choice(plain_ids))  # not a flag rule: never evaluated
                else:
                    out.append("123123")  # unknown rule id
            return list(dict.fromkeys(out))

        r = rng.random()
        if r < 0.62:
            n = rng.choices([1, 2, 3], weights=[55, 30, 15])[0]
            hs = []
            for _ in range(n):
                ho = self.gen_holdout(variables, known_var_ids)
                if rng.random() < 0.15:
                    # Ignored in the global section: the holdout still applies to every flag.
                    ho["includedRules"] = some_rule_ids() if rng.random() < 0.8 else None
                    st["holdout:global_with_includedRules"] += 1
                hs.append(ho)
            df["holdouts"] = hs
            st["holdout:global"] += n
            if any(h["status"] == "Running" and h.get("excludeTargetedDeliveries") for h in hs):
                # Users such a holdout holds are answered only by "td" experiments and the
                # rollout: make sure some flags have td experiments to reach.
                for e in all_exps:
                    if e["id"] in flag_exp_ids and e.get("type") not in ("fr", "td") and \
                            rng.random() < 0.5:
                        e["type"] = "td"
                        st["type:feature:td_for_excluded_deliveries"] += 1
        elif r < 0.68:
            df["holdouts"] = []
        r = rng.random()
        if r < 0.7:
            n = rng.choices([1, 2, 3], weights=[40, 40, 20])[0]
            hs = []
            for _ in range(n):
                ho = self.gen_holdout(variables, known_var_ids)
                r2 = rng.random()
                if r2 < 0.08:
                    st["holdout:local_without_includedRules"] += 1  # skipped by the SDK
                elif r2 < 0.12:
                    ho["includedRules"] = None  # skipped by the SDK
                    st["holdout:local_includedRules_null"] += 1
                elif r2 < 0.16:
                    ho["includedRules"] = []
                    st["holdout:local_includedRules_empty"] += 1
                else:
                    ho["includedRules"] = some_rule_ids()
                hs.append(ho)
            df["localHoldouts"] = hs
            st["holdout:local"] += n
        elif r < 0.76:
            df["localHoldouts"] = []

    # -- CMAB (only with --cmab) --------------------------------------------
    def gen_cmab(self, df, flags, experiments, groups):
        """Add CMAB experiments (a truthy `cmab` block) to flags and as plain experiments.

        Uses only `self.cmab_rng` and its own id range (>= 10^9), so the rest of the
        datafile and the users' random stream up to here are unchanged."""
        rng = self.cmab_rng
        st = self.stats
        next_id = [rng.randrange(10 ** 9, 2 * 10 ** 9)]

        def cid():
            next_id[0] += rng.randrange(1, 50)
            return str(next_id[0])

        attr_ids = [a["id"] for a in df["attributes"]]
        audience_ids = [a["id"] for a in self.all_audiences]

        def cmab_exp(variables, feature):
            n = rng.choices([1, 2, 3, 4], weights=[10, 40, 30, 20])[0]
            e = {"id": cid(), "key": "cmab_%s" % next_id[0], "layerId": cid(),
                 "status": rng.choice(["Running"] * 8 + ["Paused"])}
            r = rng.random()
            if r < 0.8:
                e["type"] = "cmab"
            elif r < 0.9:
                e["type"] = rng.choice(["ab", "td", "fr"])
            st["cmab:type_%s" % e.get("type", "absent")] += 1
            if audience_ids and rng.random() < 0.3:
                e["audienceIds"] = rng.sample(audience_ids, 1)
            else:
                e["audienceIds"] = []
            variations = []
            for i in range(n):
                v = {"id": cid(), "key": "cmab_var_%d" % i}
                if feature:
                    v["featureEnabled"] = rng.random() < 0.7
                v["variables"] = [{"id": var["id"], "value": rng.choice(VAR_VALUES[var["_t"]])}
                                  for var in variables if rng.random() < 0.6]
                variations.append(v)
            e["variations"] = variations
            # Ignored by the SDK for CMAB experiments (it buckets into cmab.trafficAllocation).
            e["trafficAllocation"] = [] if rng.random() < 0.5 else \
                [{"entityId": variations[0]["id"], "endOfRange": rng.randint(0, 10000)}]
            e["forcedVariations"] = {}
            if rng.random() < 0.1:
                e["forcedVariations"] = {"wl_alice": variations[-1]["key"]}
            ids = rng.sample(attr_ids, min(len(attr_ids), rng.randint(0, 3)))
            if rng.random() < 0.1:
                ids.append("424242")  # unknown attribute id: filtered out
            traffic = rng.choice([10000, 10000, 5000, rng.randint(0, 10000), 0])
            e["cmab"] = {"attributeIds": ids, "trafficAllocation": traffic}
            st["cmab:experiments"] += 1
            return e

        if "featureFlags" in df and flags and rng.random() < 0.6:
            for f in rng.sample(flags, min(len(flags), rng.choice([1, 1, 2]))):
                e = cmab_exp(f["_vars"], True)
                f["experimentIds"].insert(rng.randint(0, len(f["experimentIds"])), e["id"])
                if groups and rng.random() < 0.2:
                    rng.choice(groups)["experiments"].append(e)  # no group traffic for it
                    st["cmab:in_group"] += 1
                else:
                    experiments.append(e)
                st["cmab:in_flag"] += 1
        if rng.random() < 0.25:
            experiments.append(cmab_exp([], False))
            st["cmab:plain"] += 1
        # Falsy cmab blocks: ordinary bucketing.
        for e in experiments:
            if not e.get("cmab") and rng.random() < 0.05:
                e["cmab"] = rng.choice([None, {}])
                st["cmab:falsy_block"] += 1
        # Some local holdouts also hold CMAB rules.
        cmab_ids = [e["id"] for e in experiments if e.get("cmab")]
        for ho in df.get("localHoldouts", []):
            if cmab_ids and isinstance(ho.get("includedRules"), list) and rng.random() < 0.3:
                ho["includedRules"].append(rng.choice(cmab_ids))
                st["cmab:local_holdout_rule"] += 1

    # -- whole datafile -----------------------------------------------------
    def generate(self, index):
        rng = self.rng
        st = self.stats
        self.whitelist_ids = ["wl_alice", "wl_bob", "wl_ünï", "", "wl_%d" % rng.randrange(100)]

        version = rng.choices(["4", "2", "3"], weights=[80, 10, 10])[0]
        st["version:" + version] += 1

        specs = rng.sample(ATTR_SPECS, rng.randint(3, 8))
        if rng.random() < 0.25:
            specs.append(RESERVED_DF_ATTR_SPECS[0])
            st["datafile:$opt_prefixed_attribute"] += 1
        self.attr_specs = specs
        attributes = [{"id": self.nid(), "key": k} for k, _ in specs]

        self.all_audiences = []
        legacy, typed = self.gen_audiences()
        self.all_audiences = legacy + typed

        # Plain A/B experiments
        experiments = [self.gen_experiment("exp") for _ in range(rng.randint(1, 5))]

        # Feature flags with feature-test experiments and rollouts
        flags, rollouts, groups = [], [], []
        group_pending = []  # feature experiments destined for groups
        nflags = rng.choices([0, 1, 2, 3, 4, 5, 6], weights=[3, 10, 20, 25, 20, 12, 10])[0]
        for fi in range(nflags):
            variables = self.gen_variables()
            flag = {"id": self.nid(), "key": "flag_%d_%d" % (fi, rng.randrange(1000)),
                    "experimentIds": [], "rolloutId": "", "variables": []}
            for _ in range(rng.choices([0, 1, 2], weights=[35, 45, 20])[0]):
                fexp = self.gen_experiment("ftest", variables=variables, feature=True)
                if fexp.get("type") == "fr" and rng.random() < 0.75:
                    # Feature-rollout shape: one variation on part of the traffic; the SDK
                    # sends the rest of the traffic to the flag's "Everyone Else" variation.
                    fexp["variations"] = fexp["variations"][:1]
                    end = rng.choice([0, 10000, rng.randint(1, 9999), rng.randint(1, 9999)])
                    fexp["trafficAllocation"] = [{"entityId": fexp["variations"][0]["id"],
                                                  "endOfRange": end}]
                    st["fr:rollout_shape"] += 1
                flag["experimentIds"].append(fexp["id"])
                if rng.random() < 0.3:
                    group_pending.append(fexp)
                else:
                    experiments.append(fexp)
            r = rng.random()
            if r < 0.8:
                ro = self.gen_rollout(variables, fi)
                rollouts.append(ro)
                flag["rolloutId"] = ro["id"]
            else:
                st["flag:no_rollout"] += 1
            flag["variables"] = [{k: v for k, v in var.items() if k != "_t"} for var in variables]
            flag["_vars"] = variables
            flags.append(flag)
        if rng.random() < 0.2:
            rollouts.append(self.gen_rollout([], 99))  # unreferenced rollout

        # Groups: random (mutually exclusive) or overlapping
        for gi in range(rng.choices([0, 1, 2], weights=[40, 40, 20])[0]):
            members = [self.gen_experiment("gexp") for _ in range(rng.randint(1, 3))]
            take = [e for e in group_pending[:2]]
            group_pending = group_pending[2:]
            members.extend(take)
            rng.shuffle(members)
            policy = "random" if rng.random() < 0.75 else "overlapping"
            st["group:" + policy] += 1
            gtraffic = self.gen_traffic([e["id"] for e in members], "group_traffic") \
                if policy == "random" or rng.random() < 0.5 else []
            groups.append({"id": self.nid(), "policy": policy, "experiments": members,
                           "trafficAllocation": gtraffic})
        experiments.extend(group_pending)  # leftovers stay top level

        events = []
        all_exp_ids = [e["id"] for e in experiments] + \
            [e["id"] for g in groups for e in g["experiments"]]
        for ei in range(rng.randint(1, 4)):
            ids = rng.sample(all_exp_ids, rng.randint(0, min(3, len(all_exp_ids))))
            events.append({"id": self.nid(), "key": "event_%d" % ei, "experimentIds": ids})

        for f in flags:
            if f["rolloutId"]:
                for fid in f["experimentIds"]:
                    st["fr:rules_in_flags_with_rollout"] += sum(
                        1 for e in experiments + [m for g in groups for m in g["experiments"]]
                        if e["id"] == fid and e.get("type") == "fr")

        df = {
            "version": version,
            "accountId": str(rng.randrange(10 ** 9, 10 ** 10)),
            "projectId": str(rng.randrange(10 ** 9, 10 ** 10)),
            "revision": str(rng.randint(1, 500)),
            "anonymizeIP": rng.random() < 0.5,
            "attributes": attributes,
            "audiences": legacy,
            "experiments": experiments,
            "groups": groups,
            "events": events,
        }
        if not (version == "2" and rng.random() < 0.4):
            df["typedAudiences"] = typed
            df["featureFlags"] = flags
            df["rollouts"] = rollouts
        else:
            st["datafile:no_flag_sections"] += 1
        self.gen_holdouts(df, flags, rollouts, experiments, groups)
        if self.cmab_rng is not None:
            self.gen_cmab(df, flags, experiments, groups)
        for f in flags:
            del f["_vars"]
        group_ids = {m["id"] for g in groups for m in g["experiments"]}
        exp_by_id = {e["id"]: e for e in collect_keys(df)[0]}
        for eid, ee in fr_injections(df).items():
            st["fr:given_everyone_else"] += 1
            if any(v["key"] == ee["key"] for v in exp_by_id[eid]["variations"]):
                st["fr:own_variation_has_everyone_else_key"] += 1
            if eid in group_ids:
                st["fr:given_everyone_else_in_group"] += 1
        r = rng.random()
        if r < 0.6:
            df["botFiltering"] = rng.random() < 0.5
        r = rng.random()
        if r < 0.7:
            df["sendFlagDecisions"] = rng.random() < 0.5
        st["sendFlagDecisions:%s" % df.get("sendFlagDecisions", "absent")] += 1
        r = rng.random()
        if r < 0.25:
            df["region"] = "EU"
        elif r < 0.30:
            df["region"] = "US"
        elif r < 0.32:
            df["region"] = rng.choice(["eu", "APAC"])
        st["region:%s" % df.get("region", "absent")] += 1
        if rng.random() < 0.5:
            df["sdkKey"] = "sdk_%d" % rng.randrange(10 ** 6)
            df["environmentKey"] = rng.choice(["production", "development"])
        if rng.random() < 0.2:
            df["variables"] = []
        # Shuffle top-level key order a bit (order is irrelevant to the SDK).
        items = list(df.items())
        rng.shuffle(items)
        return dict(items)


# ---------------------------------------------------------------------------
# User generation
# ---------------------------------------------------------------------------

def collect_keys(df):
    """Experiment keys in datafile order (top-level, then group members), rollout rule keys,
    flag keys, event keys, whitelisted ids."""
    exps = list(df.get("experiments", []))
    for g in df.get("groups", []):
        exps.extend(g["experiments"])
    rules = [r for ro in df.get("rollouts", []) for r in ro["experiments"]]
    wl = []
    for e in exps:
        for uid in e["forcedVariations"]:
            if uid not in wl:
                wl.append(uid)
    return exps, rules, wl


def fr_injections(df):
    """{experiment id: "Everyone Else" variation dict} for the experiments the SDK extends.

    Mirrors the SDK's rule: for each flag with a rollout whose last rule has a variation,
    every experiment in the flag's experimentIds whose `type` is exactly "fr" gets that
    variation appended (with endOfRange 10000 at the end of its traffic).
    """
    exp_by_id = {e["id"]: e for e in collect_keys(df)[0]}
    ro_by_id = {r["id"]: r for r in df.get("rollouts", [])}
    out = {}
    for f in df.get("featureFlags", []):
        ro = ro_by_id.get(f.get("rolloutId") or "")
        if not ro or not ro["experiments"] or not ro["experiments"][-1].get("variations"):
            continue
        ee = ro["experiments"][-1]["variations"][0]
        for eid in f["experimentIds"]:
            e = exp_by_id.get(eid)
            if e is not None and e.get("type") == "fr":
                out[eid] = ee
    return out


def holdout_keys(df):
    """(global running holdout ids, local running holdout ids, all holdout keys)."""
    glob = {h["id"] for h in df.get("holdouts", []) if h["status"] == "Running"}
    loc = {h["id"] for h in df.get("localHoldouts", [])
           if h["status"] == "Running" and h.get("includedRules") is not None}
    keys = [h["key"] for h in df.get("holdouts", []) + df.get("localHoldouts", [])]
    return glob, loc, keys


class UserGen:
    def __init__(self, rng, df, stats, cmab=False):
        self.rng = rng
        self.df = df
        self.stats = stats
        self.cmab = cmab
        self.exps, self.rules, self.wl_ids = collect_keys(df)
        self.flags = df.get("featureFlags", [])
        self.flag_keys = [f["key"] for f in self.flags]
        self.events = [e["key"] for e in df.get("events", [])]
        self.injected = fr_injections(df)
        self.holdout_keys = holdout_keys(df)[2]
        keys = [a["key"] for a in df["attributes"]]
        self.attr_specs = [(k, kind) for k, kind in ATTR_SPECS + GHOST_ATTR_SPECS + RESERVED_DF_ATTR_SPECS
                           if k in keys or (k, kind) in GHOST_ATTR_SPECS]
        # Variations per flag (experiments then rollout rules), for forced decisions.
        exp_by_id = {e["id"]: e for e in self.exps}
        ro_by_id = {r["id"]: r for r in df.get("rollouts", [])}
        self.flag_rules = {}
        for f in self.flags:
            rules = [exp_by_id[i] for i in f["experimentIds"] if i in exp_by_id]
            if f.get("rolloutId") and f["rolloutId"] in ro_by_id:
                rules += ro_by_id[f["rolloutId"]]["experiments"]
            self.flag_rules[f["key"]] = rules

    def user_id(self):
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            return "user_%d" % rng.randrange(1000000)
        if r < 0.60 and self.wl_ids:
            self.stats["user:whitelisted_id"] += 1
            return rng.choice(self.wl_ids)
        if r < 0.64:
            self.stats["user:empty_id"] += 1
            return ""
        if r < 0.76:
            self.stats["user:unicode_id"] += 1
            return rng.choice(["ユーザー", "üser-", "😀", "Ωμέγα ", "用户"]) + str(rng.randrange(10000))
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(rng.randint(1, 24)))

    def attr_value(self, kind):
        rng = self.rng
        r = rng.random()
        if r < 0.10:
            self.stats["attr:wild_type"] += 1
            return copy.deepcopy(rng.choice(WILD_VALUES))
        if r < 0.14 and kind in ("num", "semver"):
            self.stats["attr:big_number"] += 1
            return rng.choice(BIG_NUM_POOL)
        if kind == "num":
            v = rng.choice(NUM_POOL)
            if rng.random() < 0.15:
                v = rng.choice([rng.randint(-100, 100), round(rng.uniform(-100, 100), 3)])
            return v
        if kind == "str":
            return rng.choice(STR_POOLS.get(self.cur_key, STR_POOL) if rng.random() < 0.85 else STR_POOL)
        if kind == "bool":
            return rng.random() < 0.5
        return rng.choice(SEMVER_POOL)

    def attributes(self):
        rng = self.rng
        attrs = {}
        for key, kind in self.attr_specs:
            if rng.random() < 0.8:
                self.cur_key = key
                attrs[key] = self.attr_value(kind)
        if rng.random() < 0.15:
            attrs["unlisted_%d" % rng.randrange(5)] = rng.choice(STR_POOL + NUM_POOL)
            self.stats["attr:not_in_datafile"] += 1
        r = rng.random()
        if r < 0.12:
            attrs["$opt_bucketing_id"] = rng.choice(["bucket_%d" % rng.randrange(1000), "", "ü🎉"])
            self.stats["attr:bucketing_id_string"] += 1
        elif r < 0.17:
            attrs["$opt_bucketing_id"] = rng.choice([123, None, True, 1.5, ["x"]])
            self.stats["attr:bucketing_id_non_string"] += 1
        if rng.random() < 0.05:
            attrs["$opt_user_agent"] = rng.choice(["Googlebot/2.1", "Mozilla/5.0"])
        items = list(attrs.items())
        rng.shuffle(items)
        return dict(items)

    def segments(self):
        rng = self.rng
        if rng.random() < 0.55:
            return None
        pool = SEGMENT_POOL + ["seg_unknown"]
        return rng.sample(pool, rng.randint(0, 3))

    def profile(self, uid):
        rng = self.rng
        if rng.random() < 0.75 or not self.exps:
            return None
        ebm = {}
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            exp = rng.choice(self.exps)
            if r < 0.55:
                if exp["id"] in self.injected and rng.random() < 0.5:
                    vid = self.injected[exp["id"]]["id"]
                    self.stats["profile:fr_everyone_else"] += 1
                else:
                    vid = rng.choice(exp["variations"])["id"]
                ebm[exp["id"]] = {"variation_id": vid}
                self.stats["profile:valid_entry"] += 1
            elif r < 0.75:
                ebm[exp["id"]] = {"variation_id": "31415926"}
                self.stats["profile:stale_variation"] += 1
            elif r < 0.85:
                other = rng.choice(self.exps)
                ebm[exp["id"]] = {"variation_id": rng.choice(other["variations"])["id"]}
                self.stats["profile:foreign_variation"] += 1
            else:
                ebm["271828"] = {"variation_id": rng.choice(exp["variations"])["id"]}
                self.stats["profile:unknown_experiment"] += 1
        return {"user_id": uid, "experiment_bucket_map": ebm}

    def forced_variations(self):
        rng = self.rng
        if rng.random() < 0.82 or not self.exps:
            return []
        out = []
        for _ in range(rng.randint(1, 3)):
            pool = self.exps + (self.rules if rng.random() < 0.15 else [])
            exp = rng.choice(pool)
            r = rng.random()
            if r < 0.75:
                vk = rng.choice(exp["variations"])["key"] if exp["variations"] else "none"
                if exp["id"] in self.injected and rng.random() < 0.4:
                    vk = self.injected[exp["id"]]["key"]
                    self.stats["forced_variation:fr_everyone_else"] += 1
            elif r < 0.9:
                vk = "no_such_variation"
            else:
                vk = rng.choice(["", "x"])
            r = rng.random()
            if r < 0.95:
                ek = exp["key"]
            elif r < 0.97 and self.holdout_keys:
                ek = rng.choice(self.holdout_keys)  # not an experiment: rejected
                vk = rng.choice(["off", "on", "control"])
            else:
                ek = "no_such_experiment"
            out.append((ek, vk))
        return out

    def forced_decisions(self):
        rng = self.rng
        if rng.random() < 0.78 or not self.flags:
            return []
        out = []
        for _ in range(rng.randint(1, 3)):
            fk = rng.choice(self.flag_keys) if rng.random() < 0.95 else "no_such_flag"
            rules = self.flag_rules.get(fk, [])
            r = rng.random()
            if r < 0.4 or not rules:
                rule_key = None
            elif r < 0.9:
                rule_key = rng.choice(rules)["key"]
            elif r < 0.93 and self.holdout_keys:
                rule_key = rng.choice(self.holdout_keys)  # holdouts are no forced-decision rule
            else:
                rule_key = rng.choice([x["key"] for x in self.rules + self.exps] + ["no_such_rule"])
            r = rng.random()
            if rules and r < 0.75:
                rule = rng.choice(rules)
                vk = rng.choice(rule["variations"])["key"] if rule["variations"] else "nope"
            elif r < 0.85:
                src = rng.choice(self.exps)
                vk = rng.choice(src["variations"])["key"]
            else:
                vk = "no_such_variation"
            out.append({"flag_key": fk, "rule_key": rule_key, "variation_key": vk})
        return out

    def event_tags(self):
        rng = self.rng
        if rng.random() < 0.3:
            return None
        tags = {}
        r = rng.random()
        if r < 0.25:
            tags["revenue"] = rng.choice([100, 0, -50, 4200, 2 ** 40])
            self.stats["tags:revenue_int"] += 1
        elif r < 0.35:
            tags["revenue"] = rng.choice([99.5, 100.0, -0.25])
            self.stats["tags:revenue_float"] += 1
        elif r < 0.45:
            tags["revenue"] = rng.choice(["100", "abc", "1.5"])
            self.stats["tags:revenue_string"] += 1
        elif r < 0.48:
            tags["revenue"] = rng.choice([True, None])
            self.stats["tags:revenue_other"] += 1
        r = rng.random()
        if r < 0.25:
            tags["value"] = rng.choice([3.14, -0.5, 1e3, 0.0])
            self.stats["tags:value_float"] += 1
        elif r < 0.35:
            tags["value"] = rng.choice([42, 0, -7, 2 ** 53])
            self.stats["tags:value_int"] += 1
        elif r < 0.47:
            tags["value"] = rng.choice(["3.14", "42", "-0.5", "1e3", "abc", "1,234", "", " 7 "])
            self.stats["tags:value_string"] += 1
        elif r < 0.50:
            tags["value"] = rng.choice([True, None, [1]])
            self.stats["tags:value_other"] += 1
        for _ in range(rng.randint(0, 3)):
            k = rng.choice(["category", "sku", "qty", "flag", "nested", "ünï", "price"])
            tags[k] = copy.deepcopy(rng.choice(["shoes", "ünï 🎉", 3, 2.5, True, None, {"a": [1, "b"]}, [1, 2]]))
        items = list(tags.items())
        rng.shuffle(items)
        return dict(items)

    def plan(self):
        """Draw all random inputs for one user (before running the SDK)."""
        rng = self.rng
        uid = self.user_id()
        plan = {
            "user_id": uid,
            "attributes": self.attributes(),
            "segments": self.segments(),
            "profile": self.profile(uid),
            "forced_variation_attempts": self.forced_variations(),
            "forced_decisions": self.forced_decisions(),
        }
        gv_pool = [e["key"] for e in self.exps] + [r["key"] for r in self.rules] + ["no_such_experiment"]
        if self.holdout_keys and rng.random() < 0.1:
            gv_pool.append(rng.choice(self.holdout_keys))
        plan["get_variation_keys"] = [rng.choice(gv_pool) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            pool = self.flag_keys + ["no_such_flag"]
            keys = rng.sample(pool, min(len(pool), rng.randint(1, 3)))
            opts = [o for o in RECORDED_DECIDE_OPTIONS if rng.random() < 0.3]
            if self.cmab:
                opts += [o for o in CMAB_DECIDE_OPTIONS if rng.random() < 0.12]
            rng.shuffle(opts)
            plan["decide"] = (keys, opts, rng.random() < 0.3)
        else:
            plan["decide"] = None
        plan["tracks"] = []
        for _ in range(rng.randint(1, 2)):
            if self.events and rng.random() < 0.85:
                ek = rng.choice(self.events)
            else:
                ek = "no_such_event"
            plan["tracks"].append((ek, self.event_tags()))
        return plan


# ---------------------------------------------------------------------------
# Running the SDK
# ---------------------------------------------------------------------------

def decision_json(d):
    return {
        "enabled": bool(d.enabled),
        "variation_key": d.variation_key,
        "rule_key": d.rule_key,
        "variables": d.variables,
    }


class Runner:
    def __init__(self, df, stats, cmab_server=None, case=None):
        self.logger = logger = CountingLogger(stats)
        self.cmab_server = cmab_server
        settings = OptimizelySdkSettings(odp_disabled=True)
        if cmab_server is not None:
            cmab_server.register(case, df)
            settings = OptimizelySdkSettings(odp_disabled=True,
                                             cmab_prediction_endpoint=cmab_server.url_template(case))
        self.stats = stats
        self.dispatcher = CapturingDispatcher()
        self.ups = InMemoryProfileService()
        self.client = optimizely_sdk.Optimizely(
            datafile=json.dumps(df),
            event_dispatcher=self.dispatcher,
            logger=logger,
            user_profile_service=self.ups,
            # The 5.7.0 default is a BatchEventProcessor (background thread);
            # ForwardingEventProcessor dispatches synchronously inside each call.
            event_processor=ForwardingEventProcessor(self.dispatcher, logger=logger),
            settings=settings,
        )
        if not self.client.is_valid or self.client.config_manager.get_config() is None:
            raise RuntimeError("generated datafile rejected by the SDK")
        self.exps, self.rules, _ = collect_keys(df)
        self.injected = {k: v["id"] for k, v in fr_injections(df).items()}
        self.global_ids, self.local_ids, keys = holdout_keys(df)
        self.holdout_key_set = set(keys)
        self.user_seen = set()
        self._instrument(self.client.decision_service)
        if cmab_server is not None:
            cc = self.client.cmab_client
            cc.retry_config = CmabRetryConfig(initial_backoff=CMAB_INITIAL_BACKOFF)
            fetch = cc.fetch_decision
            cc.fetch_decision = lambda rule_id, user_id, attributes, cmab_uuid, timeout=None: \
                fetch(rule_id, user_id, attributes, cmab_uuid, CMAB_TIMEOUT)

    def _cmab(self, call):
        """Attach the prediction requests a call made (only with --cmab)."""
        if self.cmab_server is not None:
            reqs = []
            for r in self.cmab_server.take_log():
                r.pop("path", None)
                self.stats["cmab_request:%s" % r.get("outcome")] += 1
                if r.get("attempt", 0) > 0 and r.get("class") in ("ok", "unknown_variation"):
                    # A retry the server did not provoke: an answer came later than
                    # CMAB_TIMEOUT (machine overloaded). This user's record is not reproducible.
                    self.stats["cmab_request:UNPROVOKED_RETRY"] += 1
                    print("warning: CMAB request retried without cause (slow machine?): %s" % r,
                          file=sys.stderr)
                reqs.append(r)
            call["cmab_requests"] = reqs
        return call

    @property
    def stats(self):
        return self._stats

    @stats.setter
    def stats(self, counter):
        self._stats = counter
        self.logger.counter = counter

    def _instrument(self, ds):
        """Count (never change) what the decision service answers: holdout hits, holdouts
        bypassed by excludeTargetedDeliveries, fr "Everyone Else" variations served."""
        flag_decision = ds.get_decision_for_flag
        variation = ds.get_variation
        injected = self.injected

        def counted_flag_decision(*args, **kwargs):
            res = flag_decision(*args, **kwargs)
            st = self.stats
            d = res["decision"]
            exp = d.experiment
            seen = self.user_seen
            if res.get("error"):
                st["flag_decision:error"] += 1
                seen.add("flag_decision_error")
            if d.source == "holdout" and exp is not None:
                if exp.id in self.global_ids:
                    st["holdout_hit:global"] += 1
                    seen.add("held_out_globally")
                elif exp.id in self.local_ids:
                    st["holdout_hit:local"] += 1
                    seen.add("held_out_locally")
            if "holdout_decision" in res:
                st["holdout_etd:then_%s_%s" % (d.source, "variation" if d.variation else "none")] += 1
                seen.add("held_out_excluding_targeted_deliveries")
            if d.variation is not None and exp is not None and exp.id in injected and \
                    getattr(d.variation, "id", None) == injected[exp.id]:
                st["fr_everyone_else:decide"] += 1
                seen.add("fr_everyone_else_in_decide")
            return res

        def counted_variation(*args, **kwargs):
            res = variation(*args, **kwargs)
            exp = args[1] if len(args) > 1 else kwargs.get("experiment")
            v = res["variation"]
            if v is not None and exp is not None and exp.id in injected and \
                    getattr(v, "id", None) == injected[exp.id]:
                self.stats["fr_everyone_else:get_variation"] += 1
                self.user_seen.add("fr_everyone_else_in_get_variation")
            return res

        ds.get_decision_for_flag = counted_flag_decision
        ds.get_variation = counted_variation

    def close(self):
        self.client.close()

    def run_user(self, plan):
        st = self.stats
        c = self.client
        uid = plan["user_id"]
        attrs = plan["attributes"]
        self.ups.reset(plan["profile"])
        self.dispatcher.take()
        self.user_seen = set()
        accepted = []
        try:
            for ek, vk in plan["forced_variation_attempts"]:
                if c.set_forced_variation(ek, uid, vk):
                    accepted.append({"experiment_key": ek, "variation_key": vk})
                    st["forced_variation:accepted"] += 1
                else:
                    st["forced_variation:rejected"] += 1
            ctx = c.create_user_context(uid, copy.deepcopy(attrs))
            for fd in plan["forced_decisions"]:
                ctx.set_forced_decision(
                    OptimizelyUserContext.OptimizelyDecisionContext(fd["flag_key"], fd["rule_key"]),
                    OptimizelyUserContext.OptimizelyForcedDecision(fd["variation_key"]))
                st["forced_decision:%s" % ("flag" if fd["rule_key"] is None else "rule")] += 1
            if plan["segments"] is not None:
                ctx.set_qualified_segments(list(plan["segments"]))

            calls = []
            for exp in self.exps:
                vk = c.activate(exp["key"], uid, copy.deepcopy(attrs))
                ev = self.dispatcher.take()
                calls.append(self._cmab({"op": "activate", "experiment_key": exp["key"],
                                         "variation_key": vk, "events": ev}))
                st["activate:%s" % ("variation" if vk is not None else "null")] += 1
                st["events:activate"] += len(ev)
            for ek in plan["get_variation_keys"]:
                vk = c.get_variation(ek, uid, copy.deepcopy(attrs))
                ev = self.dispatcher.take()
                assert not ev, "get_variation dispatched events"
                calls.append(self._cmab({"op": "get_variation", "experiment_key": ek, "variation_key": vk}))
                st["get_variation:%s" % ("variation" if vk is not None else "null")] += 1

            decisions = ctx.decide_all()
            calls.append(self._cmab(self._decide_call(None, [], decisions)))

            if plan["decide"] is not None:
                keys, opts, with_reasons = plan["decide"]
                actual = list(opts) + ([INCLUDE_REASONS] if with_reasons else [])
                if len(keys) == 1:
                    d = ctx.decide(keys[0], actual)
                    decisions = {keys[0]: d}
                else:
                    decisions = ctx.decide_for_keys(list(keys), actual)
                calls.append(self._cmab(self._decide_call(list(keys), list(opts), decisions)))
                st["decide:options_%d" % len(opts)] += 1

            for ek, tags in plan["tracks"]:
                ctx.track_event(ek, copy.deepcopy(tags))
                ev = self.dispatcher.take()
                calls.append(self._cmab({"op": "track", "event_key": ek, "event_tags": tags, "events": ev}))
                st["track:%s" % ("event" if ev else "no_event")] += 1
                st["events:track"] += len(ev)
                for e in ev:
                    for vis in e["params"]["visitors"]:
                        for snap in vis["snapshots"]:
                            for sev in snap["events"]:
                                st["track_event_has_revenue:%s" % ("revenue" in sev)] += 1
                                st["track_event_has_value:%s" % ("value" in sev)] += 1
        finally:
            for fv in accepted:
                c.set_forced_variation(fv["experiment_key"], uid, None)

        for ev_call in calls:
            for e in ev_call.get("events", []):
                st["event_url:%s" % e["url"]] += 1
        for tag in self.user_seen:
            st["users_with:" + tag] += 1
        final = self.ups.saves[-1] if self.ups.saves else None
        st["profile_saved:%s" % (final is not None)] += 1
        return {
            "user_id": uid,
            "attributes": attrs,
            "segments": plan["segments"],
            "profile": plan["profile"],
            "forced_variations": accepted,
            "forced_decisions": plan["forced_decisions"],
            "calls": calls,
            "final_profile": final,
        }

    def _decide_call(self, keys, opts, decisions):
        st = self.stats
        ev = self.dispatcher.take()
        out = {}
        for k, d in decisions.items():
            out[k] = decision_json(d)
            st["decision:%s" % ("enabled" if d.enabled else "disabled")] += 1
            st["decision:rule_key_%s" % ("set" if d.rule_key is not None else "null")] += 1
            if d.rule_key in self.holdout_key_set:
                st["decision:rule_key_is_holdout"] += 1
        st["events:decide"] += len(ev)
        for e in ev:
            for vis in e["params"]["visitors"]:
                for snap in vis["snapshots"]:
                    for dec in snap.get("decisions", []):
                        st["decide_event_rule_type:%s" % dec["metadata"]["rule_type"]] += 1
        return {"op": "decide", "keys": keys, "options": opts, "decisions": out, "events": ev}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--datafiles", type=int, default=20)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cmab", action="store_true",
                    help="also generate CMAB experiments, answered by a local prediction server "
                         "(prediction_server.py); bucketd's replay cannot replay them yet")
    args = ap.parse_args(argv)

    if SDK_VERSION != EXPECTED_SDK_VERSION:
        print("warning: optimizely-sdk %s installed, expected %s" % (SDK_VERSION, EXPECTED_SDK_VERSION),
              file=sys.stderr)

    t0 = time.perf_counter()
    master = random.Random(args.seed)
    stats = Counter()
    cases = []
    t_sdk = 0.0
    server = None
    if args.cmab:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from prediction_server import PredictionServer
        server = PredictionServer(delay=CMAB_SERVER_DELAY).start()
    for i in range(args.datafiles):
        name = "seed%d-df%d" % (args.seed, i)
        df_seed = master.getrandbits(64)
        rng = random.Random(df_seed)
        cmab_rng = random.Random(df_seed ^ 0xC0AB) if args.cmab else None
        df = DatafileGen(rng, stats, cmab_rng).generate(i)
        ts = time.perf_counter()
        runner = Runner(df, stats, server, name)
        t_sdk += time.perf_counter() - ts
        ugen = UserGen(rng, df, stats, cmab=args.cmab)
        users = []
        while len(users) < args.users:
            # Per-user counters, merged only if the user is kept.
            user_stats = Counter()
            ugen.stats = runner.stats = user_stats
            plan = ugen.plan()
            ts = time.perf_counter()
            try:
                users.append(runner.run_user(plan))
                stats.update(user_stats)
            except Exception as exc:  # SDK raised: drop the user, draw another one
                stats["sdk_exception:%s" % type(exc).__name__] += 1
            t_sdk += time.perf_counter() - ts
        runner.close()
        stats["users"] += len(users)
        cases.append({"name": name, "datafile": df, "users": users})
    if server is not None:
        server.stop()

    t_gen = time.perf_counter()
    out = {"seed": args.seed, "sdk_version": SDK_VERSION, "cases": cases}
    # json.dumps (one-shot, C encoder) is much faster than json.dump on a file.
    text = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    t_end = time.perf_counter()

    print_summary(stats, args, t_end - t0, t_sdk, t_end - t_gen)
    return 0


def print_summary(st, args, total, t_sdk, t_write):
    err = sys.stderr
    print("oracle: seed=%d datafiles=%d users/datafile=%d -> %s" % (
        args.seed, args.datafiles, args.users, args.out), file=err)
    print("timing: total %.2fs (SDK calls+client setup %.2fs, JSON write %.2fs)" % (
        total, t_sdk, t_write), file=err)

    def line(title, prefix):
        items = sorted((k[len(prefix):], v) for k, v in st.items() if k.startswith(prefix))
        if items:
            print("  %-22s %s" % (title, ", ".join("%s=%d" % kv for kv in items)), file=err)

    print("coverage:", file=err)
    print("  %-22s %d" % ("users", st["users"]), file=err)
    line("activate", "activate:")
    line("get_variation", "get_variation:")
    line("decisions", "decision:")
    line("decide options", "decide:")
    line("track", "track:")
    line("events", "events:")
    line("decide event types", "decide_event_rule_type:")
    line("event urls", "event_url:")
    line("conversion revenue", "track_event_has_revenue:")
    line("conversion value", "track_event_has_value:")
    line("match types", "match:")
    line("condition types", "condtype:")
    line("trees", "tree:")
    line("audienceConditions", "audienceConditions:")
    line("traffic", "traffic:")
    line("group traffic", "group_traffic:")
    line("groups", "group:")
    line("versions", "version:")
    line("regions", "region:")
    line("sendFlagDecisions", "sendFlagDecisions:")
    line("forced variations", "forced_variation:")
    line("forced decisions", "forced_decision:")
    line("profiles", "profile:")
    line("profile saved", "profile_saved:")
    line("whitelist", "whitelist:")
    line("users", "user:")
    line("attributes", "attr:")
    line("event tags", "tags:")
    line("variables", "variable:")
    line("rollouts", "rollout:")
    line("datafile", "datafile:")
    line("flags", "flag:")
    line("experiment types", "type:")
    line("fr rules", "fr:")
    line("fr everyone else hit", "fr_everyone_else:")
    line("holdouts generated", "holdout:")
    line("holdout traffic", "holdout_traffic:")
    line("holdout hits", "holdout_hit:")
    line("users (of all)", "users_with:")
    line("holdout excl. TD", "holdout_etd:")
    line("flag decision errors", "flag_decision:")
    line("CMAB generated", "cmab:")
    line("CMAB requests", "cmab_request:")
    line("SDK exceptions", "sdk_exception:")
    print("  SDK error logs (by message shape):", file=err)
    for k, v in sorted(st.items()):
        if k.startswith("sdk_error_log:") or k.startswith("sdk_exception_log:"):
            print("    %7d  %s" % (v, k.split(":", 1)[1]), file=err)


if __name__ == "__main__":
    sys.exit(main())
