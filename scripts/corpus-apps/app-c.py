"""app-c: a Flask program that talks to S3 through boto3, the top layer of the app-c corpus image.

The S3 client is built offline (no credentials, no network): it checks that
boto3 and botocore load their service data from the image, then Flask serves
one request from its test client.
"""
import sys

import boto3
from botocore.config import Config
from flask import Flask, jsonify

s3 = boto3.session.Session(
    aws_access_key_id="lode", aws_secret_access_key="lode", region_name="eu-west-1"
).client("s3", config=Config(retries={"max_attempts": 0}))
url = s3.generate_presigned_url("get_object", Params={"Bucket": "lode", "Key": "app-c"}, ExpiresIn=60)

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return jsonify(greeting=f"hello, {name}", python=sys.version.split()[0], boto3=boto3.__version__)


resp = app.test_client().get("/hello/lode")
print(f"app-c: {resp.status_code} {resp.get_json()}")
assert url.startswith("https://lode.s3"), url
print("app-c: ok")
