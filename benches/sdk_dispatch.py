#!/usr/bin/env python3
"""The seed's per-event design, measured: the official Python SDK's default event dispatcher.

The SDK dispatches every impression or conversion as its own synchronous POST
(`optimizely.event_dispatcher.EventDispatcher.dispatch_event`: a fresh requests session, i.e.
a new connection, per event). This sends the given single-event payloads through exactly that
dispatcher and prints the rate. `examples/flush_bench.rs` runs it against its local sink, in
the same run as the flusher.

Usage: python benches/sdk_dispatch.py URL PAYLOADS.jsonl
Prints: `<events> <seconds>`
"""
import json
import sys
import time

from optimizely.event_builder import Event
from optimizely.event_dispatcher import EventDispatcher


def main():
    url, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        payloads = [json.loads(line) for line in f if line.strip()]
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    for p in payloads:
        EventDispatcher.dispatch_event(Event(url, p, http_verb="POST", headers=headers))
    print(len(payloads), time.perf_counter() - started)


if __name__ == "__main__":
    main()
