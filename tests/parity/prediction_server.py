#!/usr/bin/env python3
"""Deterministic CMAB prediction server for the parity suite.

Stands in for Optimizely's CMAB prediction endpoint so that the Python SDK (in
oracle.py) and bucketd (in the replay) get the same answers. Standard library only.

    python tests/parity/prediction_server.py --cases ORACLE_OUTPUT.json [--port P]

URL:      POST http://HOST:PORT/<case name>/predict/<rule id>
          (the SDK's URL template is http://HOST:PORT/<case name>/predict/{})
Request:  {"instances": [{"visitorId": str, "experimentId": str,
                          "attributes": [{"id": attribute id, "value": any,
                                          "type": "custom_attribute"}, ...],
                          "cmabUUID": str}]}
Answer:   200 {"predictions": [{"variation_id": str | number}]}

What a request gets depends only on (case, rule id, visitor id, attributes as a
set of (id, value) pairs) -- see `outcome` -- plus, for the "*_once" outcomes,
how many times this cmabUUID was already seen (the SDK retries with the same
body, so the first attempt fails and the retry succeeds):

    ok                 a variation id of the rule (sometimes as a JSON number)
    unknown_variation  "999999999" (not a variation of the rule)
    fail_once          500 on the first attempt, then ok
    fail_always        500 or 503 on every attempt
    timeout_once       the first attempt is answered only after `delay` seconds
    timeout_always     every attempt is answered only after `delay` seconds
    bad_body           200 with a body the SDK rejects (not JSON, or no variation_id)

Unknown cases or rules get 404. The variation ids of a rule are its `variations`
in datafile order; `register` reads them from a datafile (experiments with a truthy
`cmab` block, top level and in groups).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (outcome, weight out of 1000)
OUTCOMES = [
    ("ok", 806),
    ("unknown_variation", 40),
    ("fail_once", 60),
    ("fail_always", 40),
    ("timeout_once", 2),
    ("timeout_always", 2),
    ("bad_body", 50),
]
UNKNOWN_VARIATION_ID = "999999999"


def _digest(case, rule_id, visitor_id, attributes):
    pairs = sorted(([str(a.get("id")), a.get("value")] for a in attributes
                    if isinstance(a, dict)), key=lambda p: p[0])
    text = json.dumps([case, rule_id, visitor_id, pairs], sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def outcome(case, rule_id, visitor_id, attributes):
    """The outcome class of a request (deterministic)."""
    n = _digest(case, rule_id, visitor_id, attributes) % 1000
    for name, weight in OUTCOMES:
        if n < weight:
            return name
        n -= weight
    return "ok"


def answer(case, rule_id, visitor_id, attributes, variation_ids):
    """The variation id an ok request gets, and whether it is sent as a JSON number."""
    d = _digest(case, rule_id, visitor_id, attributes) >> 12
    vid = variation_ids[d % len(variation_ids)]
    as_number = vid.isascii() and vid.isdigit() and (d >> 8) % 10 == 0
    return vid, as_number


class PredictionServer:
    """A threaded HTTP server answering CMAB predictions; see the module docstring."""

    def __init__(self, host="127.0.0.1", port=0, delay=1.5):
        self.delay = delay
        self.registry = {}   # (case, rule id) -> [variation ids]
        self.attempts = {}   # cmabUUID -> attempts seen
        self.log = []        # one entry per request handled
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in two writes; without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to every answer.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, body, delay = server.handle(self.path, raw)
                if delay:
                    time.sleep(delay)
                data = body.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = None

    @property
    def address(self):
        host, port = self.httpd.server_address[:2]
        return host, port

    def url_template(self, case):
        host, port = self.address
        return "http://%s:%d/%s/predict/{}" % (host, port, case)

    def register(self, case, datafile):
        exps = list(datafile.get("experiments", []))
        for g in datafile.get("groups", []):
            exps.extend(g.get("experiments", []))
        with self.lock:
            for e in exps:
                if e.get("cmab"):
                    self.registry[(case, e["id"])] = [v["id"] for v in e.get("variations", [])]

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def take_log(self):
        with self.lock:
            out, self.log = self.log, []
        return out

    def handle(self, path, raw):
        """(status, body, delay) for one request; records it in `log`."""
        parts = path.strip("/").split("/")
        entry = {"path": path}
        try:
            req = json.loads(raw.decode("utf-8"))
            inst = req["instances"][0]
            visitor, rule = inst["visitorId"], inst["experimentId"]
            attributes = inst.get("attributes") or []
            cmab_uuid = inst.get("cmabUUID")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            entry["outcome"] = "bad_request"
            self._record(entry)
            return 400, '{"error":"bad request"}', 0
        entry.update({"rule_id": rule, "visitor_id": visitor, "attributes": attributes})
        if len(parts) != 3 or parts[1] != "predict" or parts[2] != rule:
            entry["outcome"] = "not_found"
            self._record(entry)
            return 404, '{"error":"not found"}', 0
        case = parts[0]
        with self.lock:
            variation_ids = self.registry.get((case, rule))
            key = cmab_uuid if isinstance(cmab_uuid, str) else json.dumps([visitor, rule, attributes])
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        if not variation_ids:
            entry["outcome"] = "not_found"
            self._record(entry)
            return 404, '{"error":"unknown rule"}', 0
        kind = outcome(case, rule, visitor, attributes)
        entry["attempt"] = attempt
        entry["class"] = kind
        delay = 0
        if kind == "fail_always" or (kind == "fail_once" and attempt == 0):
            entry["outcome"] = "http_error"
            self._record(entry)
            return (503 if _digest(case, rule, visitor, attributes) % 2 else 500), \
                '{"error":"unavailable"}', 0
        if kind == "timeout_always" or (kind == "timeout_once" and attempt == 0):
            entry["outcome"] = "timeout"
            delay = self.delay
        if kind == "bad_body":
            entry["outcome"] = "bad_body"
            self._record(entry)
            if _digest(case, rule, visitor, attributes) % 2:
                return 200, "not json", 0
            return 200, '{"predictions":[{"variationId":"1"}]}', 0
        if kind == "unknown_variation":
            vid, as_number = UNKNOWN_VARIATION_ID, False
        else:
            vid, as_number = answer(case, rule, visitor, attributes, variation_ids)
        entry.setdefault("outcome", "ok")
        entry["variation_id"] = vid
        self._record(entry)
        value = int(vid) if as_number else vid
        return 200, json.dumps({"predictions": [{"variation_id": value}]}), delay

    def _record(self, entry):
        with self.lock:
            self.log.append(entry)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, help="oracle.py output (its datafiles are served)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=1.5,
                    help="seconds a timeout answer is held back (default 1.5)")
    args = ap.parse_args(argv)
    with open(args.cases, encoding="utf-8") as fh:
        cases = json.load(fh)
    server = PredictionServer(args.host, args.port, args.delay)
    for case in cases.get("cases", []):
        server.register(case["name"], case["datafile"])
    host, port = server.address
    print("prediction server on http://%s:%d/<case>/predict/<rule id> (%d rules)" % (
        host, port, len(server.registry)), flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
