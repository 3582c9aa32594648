"""boto3 against `lode frontend`: the Lambda API operations, their errors,
and tenant isolation. Run by tests/lambda_api.rs; exits non-zero with the
failed check on stderr.

usage: api.py PHASE ENDPOINT CREDS_JSON OTHER_CREDS_JSON DIGEST_HEX
"""
import json
import sys

import boto3
import botocore
from botocore.config import Config

phase, endpoint, creds, other_creds, digest = sys.argv[1:6]
creds, other_creds = json.loads(creds), json.loads(other_creds)
cfg = Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=120)


def client(c, **kw):
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        config=cfg,
        **kw,
    )


def expect_error(code, status, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert (got, got_status) == (code, status), f"expected {code} {status}, got {got} {got_status}: {e}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


lam = client(creds)
other = client(other_creds)

if phase == "create":
    r = lam.create_function(
        FunctionName="hello",
        Role="arn:aws:iam::123456789012:role/lambda",
        Code={"ImageUri": "acme/fn-img"},
        PackageType="Image",
        MemorySize=256,
        Timeout=5,
        Environment={"Variables": {"GREETING": "hi"}},
        ImageConfig={"Command": ["app.handler"]},
        Description="first",
    )
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201, r
    assert r["FunctionName"] == "hello" and r["State"] == "Active", r
    assert r["CodeSha256"] == digest, (r["CodeSha256"], digest)
    assert r["Environment"]["Variables"] == {"GREETING": "hi"}, r
    assert r["ImageConfigResponse"]["ImageConfig"]["Command"] == ["app.handler"], r
    arn = r["FunctionArn"]
    assert arn.startswith("arn:aws:lambda:us-east-1:") and arn.endswith(":function:hello"), arn
    expect_error("ResourceConflictException", 409, lam.create_function,
                 FunctionName="hello", Role="r", Code={"ImageUri": "acme/fn-img"}, PackageType="Image")
    lam.create_function(FunctionName="second", Role="r", Code={"ImageUri": f"acme/fn-img@sha256:{digest}"}, PackageType="Image")
    # Bad input: no such image, another tenant's image, zip packages, limits, names.
    expect_error("InvalidParameterValueException", 400, lam.create_function,
                 FunctionName="nope", Role="r", Code={"ImageUri": "acme/no-such-image"}, PackageType="Image")
    expect_error("InvalidParameterValueException", 400, lam.create_function,
                 FunctionName="nope", Role="r", Code={"ImageUri": "other/fn-img"}, PackageType="Image")
    expect_error("InvalidParameterValueException", 400, lam.create_function,
                 FunctionName="nope", Role="r", Code={"ZipFile": b"PK"}, Runtime="python3.12", Handler="a.b")
    expect_error("InvalidParameterValueException", 400, lam.create_function,
                 FunctionName="nope", Role="r", Code={"ImageUri": "acme/fn-img"}, PackageType="Image", MemorySize=20480)
    expect_error("InvalidParameterValueException", 400, lam.create_function,
                 FunctionName="nope", Role="r", Code={"ImageUri": "acme/fn-img"}, PackageType="Image",
                 Environment={"Variables": {"AWS_REGION": "x"}})
    # Reads.
    g = lam.get_function(FunctionName="hello")
    assert g["Configuration"]["FunctionArn"] == arn, g
    assert g["Code"]["ResolvedImageUri"] == f"acme/fn-img@sha256:{digest}", g["Code"]
    assert lam.get_function_configuration(FunctionName=arn)["FunctionName"] == "hello"
    assert lam.get_function(FunctionName="hello", Qualifier="$LATEST")["Configuration"]["FunctionName"] == "hello"
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName="hello", Qualifier="7")
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert names == ["hello", "second"], names
    page = lam.list_functions(MaxItems=1)
    assert [f["FunctionName"] for f in page["Functions"]] == ["hello"] and "NextMarker" in page, page
    page2 = lam.list_functions(MaxItems=1, Marker=page["NextMarker"])
    assert [f["FunctionName"] for f in page2["Functions"]] == ["second"] and "NextMarker" not in page2, page2
    names = [f["FunctionName"] for f in lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}).build_full_result()["Functions"]]
    assert names == ["hello", "second"], names
    # Changes.
    u = lam.update_function_configuration(FunctionName="hello", Timeout=10, Description="second")
    assert u["Timeout"] == 10 and u["Description"] == "second" and u["RevisionId"] != r["RevisionId"], u
    expect_error("ResourceConflictException", 409, lam.update_function_configuration,
                 FunctionName="hello", Timeout=11, RevisionId=r["RevisionId"])
    expect_error("InvalidParameterValueException", 400, lam.update_function_configuration, FunctionName="hello", Timeout=901)
    # Invoke: dry run, payload limits, malformed JSON.
    d = lam.invoke(FunctionName="hello", InvocationType="DryRun", Payload=b"{}")
    assert d["StatusCode"] == 204, d
    expect_error("RequestEntityTooLargeException", 413, lam.invoke, FunctionName="hello", Payload=b"[" + b"1," * (3_500_000) + b"1]")
    expect_error("InvalidRequestContentException", 400, lam.invoke, FunctionName="hello", Payload=b"{not json")
    expect_error("ResourceNotFoundException", 404, lam.invoke, FunctionName="absent", Payload=b"{}")
    # Isolation: the other tenant sees nothing of acme's.
    expect_error("ResourceNotFoundException", 404, other.get_function, FunctionName="hello")
    expect_error("ResourceNotFoundException", 404, other.get_function, FunctionName=arn)
    expect_error("ResourceNotFoundException", 404, other.invoke, FunctionName=arn, Payload=b"{}")
    expect_error("ResourceNotFoundException", 404, other.delete_function, FunctionName="hello")
    assert other.list_functions()["Functions"] == []
    # Authentication: a wrong secret, an unknown key, no signature.
    bad = client({"AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": "x" * 40})
    expect_error("InvalidSignatureException", 403, bad.list_functions)
    expect_error("InvalidSignatureException", 403, bad.invoke, FunctionName="hello", Payload=b"{}")
    unknown = client({"AccessKeyId": "LODEAAAAAAAAAAAAAAAA", "SecretAccessKey": "x" * 40})
    expect_error("UnrecognizedClientException", 403, unknown.list_functions)
    unsigned = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                            config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
    expect_error("UnrecognizedClientException", 403, unsigned.list_functions)
    print("create phase ok")

elif phase == "pinned":
    # A new push of fn-img changed nothing until UpdateFunctionCode.
    g = lam.get_function(FunctionName="hello")["Configuration"]
    assert g["CodeSha256"] != digest, "the function moved with the image name"
    u = lam.update_function_code(FunctionName="hello", ImageUri="acme/fn-img")
    assert u["CodeSha256"] == digest, (u["CodeSha256"], digest)
    lam.delete_function(FunctionName="hello")
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName="hello")
    expect_error("ResourceNotFoundException", 404, lam.delete_function, FunctionName="hello")
    print("pinned phase ok")
else:
    raise SystemExit(f"unknown phase {phase}")
