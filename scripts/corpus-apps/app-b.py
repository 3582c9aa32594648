"""app-b: a tiny Flask program, the top layer of the app-b corpus image."""
import sys

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return jsonify(greeting=f"hello, {name}", python=sys.version.split()[0])


resp = app.test_client().get("/hello/lode")
print(f"app-b: {resp.status_code} {resp.get_json()}")
print("app-b: ok")
