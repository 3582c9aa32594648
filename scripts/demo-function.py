"""The demo's function step: boto3 against `lode serve`. Creates a function
from the pushed image `demo/fn`, invokes it cold and warm, prints the
timings (lode's X-Lode-Timings header: placement, volume attach, VM boot,
runtime init, invocation) and the function's answers.

usage: demo-function.py ENDPOINT CREDS_JSON
"""
import json
import sys
import time

import boto3
from botocore.config import Config

endpoint, creds = sys.argv[1], json.loads(sys.argv[2])
lam = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id=creds["AccessKeyId"],
    aws_secret_access_key=creds["SecretAccessKey"],
    config=Config(retries={"max_attempts": 1}, read_timeout=600),
)
try:
    lam.delete_function(FunctionName="demo-fn")
except lam.exceptions.ResourceNotFoundException:
    pass
f = lam.create_function(
    FunctionName="demo-fn", Role="arn:aws:iam::123456789012:role/demo", PackageType="Image",
    Code={"ImageUri": "demo/fn"}, MemorySize=512, Timeout=60,
)
print(f"created {f['FunctionArn']} (image demo/fn@sha256:{f['CodeSha256'][:12]}...)")


def ms(us):
    return f"{int(us) / 1000:.0f} ms" if int(us) < 10_000_000 else f"{int(us) / 1e6:.1f} s"


summary = []
for kind in ("cold", "warm"):
    t0 = time.time()
    r = lam.invoke(FunctionName="demo-fn", Payload=json.dumps({"q": kind}).encode())
    took = time.time() - t0
    body = json.loads(r["Payload"].read())
    if r.get("FunctionError"):
        raise SystemExit(f"{kind} invocation failed: {body}")
    h = r["ResponseMetadata"]["HTTPHeaders"]
    t = dict(kv.split("=") for kv in h["x-lode-timings"].split())
    line = (f"{kind}: {took * 1000:.0f} ms (placement {ms(t['placement'])}, attach {ms(t['attach'])}, "
            f"boot {ms(t['boot'])}, init {ms(t['init'])}, invoke {ms(t['invoke'])}; sandbox {h['x-lode-sandbox']})")
    print(line)
    print(f"  -> {json.dumps(body)}")
    summary.append(f"{kind} {took * 1000:.0f} ms")
    assert (h["x-lode-warm"] == "true") == (kind == "warm"), h
print("function: " + ", ".join(summary))
