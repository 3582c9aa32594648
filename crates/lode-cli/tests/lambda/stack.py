"""boto3 against a whole function stack (frontend, manager, two workers
running micro-VMs): create, invoke (sync, async, dry run, log tail), warm
reuse, cache affinity, function errors, update, delete. Run by
tests/lambda_stack.rs; exits non-zero with the failed check on stderr.

usage: stack.py ENDPOINT CREDS_JSON MANAGER_URL
"""
import base64
import json
import sys
import time
import urllib.request

import boto3
import botocore
from botocore.config import Config

endpoint, creds, manager = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
lam = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id=creds["AccessKeyId"],
    aws_secret_access_key=creds["SecretAccessKey"],
    config=Config(retries={"max_attempts": 1}, read_timeout=600, connect_timeout=10),
)


def state():
    with urllib.request.urlopen(manager + "/v1/state", timeout=10) as r:
        return json.load(r)


def invoke(name, event, **kw):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), **kw)
    h = r["ResponseMetadata"]["HTTPHeaders"]
    return r, json.loads(r["Payload"].read() or b"null"), h


lam.create_function(
    FunctionName="rt", Role="arn:aws:iam::123456789012:role/x", PackageType="Image",
    Code={"ImageUri": "acme/rt"}, MemorySize=256, Timeout=30,
)
# Cold, then warm in the same sandbox (the runtime counts its invocations).
r1, p1, h1 = invoke("rt", {"n": 1})
assert r1["StatusCode"] == 200 and "FunctionError" not in r1, r1
assert p1["count"] == 1 and p1["event"] == {"n": 1} and p1["cwd"] == "/var/task", p1
assert p1["handler"] == "function.handler" and p1["region"] == "us-east-1", p1
assert h1["x-lode-warm"] == "false", h1
r2, p2, h2 = invoke("rt", {"n": 2}, LogType="Tail")
assert p2["count"] == 2, p2
assert h2["x-lode-warm"] == "true" and h2["x-lode-sandbox"] == h1["x-lode-sandbox"], (h1, h2)
log = base64.b64decode(r2["LogResult"]).decode()
assert "handling" in log and len(base64.b64decode(r2["LogResult"])) <= 4096, log
# A function error.
r3, p3, _ = invoke("rt", {"fail": 1})
assert r3.get("FunctionError") == "Unhandled" and p3["errorType"] == "Custom.Fail", (r3, p3)
# Dry run, then an asynchronous invocation (the manager places it).
assert lam.invoke(FunctionName="rt", InvocationType="DryRun")["StatusCode"] == 204
placed = lambda s: sum(s["placements"].values())
before = placed(state())
ev = lam.invoke(FunctionName="rt", InvocationType="Event", Payload=b'{"async": true}')
assert ev["StatusCode"] == 202, ev
deadline = time.time() + 120
while placed(state()) == before:
    assert time.time() < deadline, "the asynchronous invocation was never placed"
    time.sleep(0.2)
# Cache affinity: another function of the same image starts cold on the
# worker whose host cache holds the image.
lam.create_function(
    FunctionName="affine", Role="r", PackageType="Image", Code={"ImageUri": "acme/rt"},
    MemorySize=256, Timeout=30,
)
time.sleep(1.5)  # a report round: the worker lists the image it attached
ra, pa, ha = invoke("affine", {"n": 1})
assert pa["count"] == 1 and ha["x-lode-warm"] == "false", (pa, ha)
assert ha["x-lode-worker"] == h1["x-lode-worker"], ("not on the worker caching the image", h1, ha)
s = state()
assert s["placements"]["cold_cached"] >= 1, s["placements"]
# A configuration change is a new revision: a new sandbox.
lam.update_function_configuration(FunctionName="rt", Environment={"Variables": {"VER": "2"}})
r4, p4, h4 = invoke("rt", {"n": 4})
assert p4["count"] == 1 and h4["x-lode-warm"] == "false", (p4, h4)
names = sorted(f["FunctionName"] for f in lam.list_functions()["Functions"])
assert names == ["affine", "rt"], names
lam.delete_function(FunctionName="affine")
print("stack ok", json.dumps({"cold": h1["x-lode-timings"], "warm": h2["x-lode-timings"]}))
