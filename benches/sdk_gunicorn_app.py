"""The seed's design as an HTTP baseline: the official Python SDK behind gunicorn, answering the
same `/bucketer?e=&u=&a=` call as bucketd (activate: audiences + bucketing + an impression).

Run by benches/suite.sh: `gunicorn -w 2 -b 127.0.0.1:PORT --chdir benches sdk_gunicorn_app:app`
(two workers for the two cores). DATAFILE names the datafile (default: the bundled example).

The impression goes to a dispatcher that drops it, so this baseline does less than bucketd (no
queue write, no fsync): the ratio flatters the SDK.
"""
import json
import os
from urllib.parse import parse_qs

from optimizely import optimizely
from optimizely import logger as opt_logger

HERE = os.path.dirname(os.path.abspath(__file__))
DATAFILE = os.environ.get("DATAFILE", os.path.join(HERE, "..", "examples", "datafile.json"))


class DropDispatcher:
    @staticmethod
    def dispatch_event(event):
        return None


with open(DATAFILE) as f:
    CLIENT = optimizely.Optimizely(datafile=f.read(), logger=opt_logger.NoOpLogger(),
                                   event_dispatcher=DropDispatcher())


def attributes(raw):
    """`a=tier:"platinum",age:31` (the bucketer's form: JSON values after `name:`)."""
    out = {}
    for part in raw.split(","):
        if ":" in part:
            k, v = part.split(":", 1)
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
    return out


def app(environ, start_response):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    exp = q.get("e", [""])[0]
    user = q.get("u", [""])[0]
    attrs = attributes(q.get("a", [""])[0])
    variation = CLIENT.activate(exp, user, attrs)
    body = json.dumps({"experiment_key": exp, "user_id": user, "variation_key": variation}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
