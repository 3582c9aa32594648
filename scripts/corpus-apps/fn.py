"""fn: a Lambda handler on the app-a stack (requests), run by AWS's own
runtime interface client (`python3 -m awslambdaric app.handler`)."""
import sys
import time

import requests

LOADED = time.time()
COUNT = 0


def handler(event, context):
    global COUNT
    COUNT += 1
    req = requests.Request("GET", "https://example.invalid/search", params={"q": event.get("q", "lode")}).prepare()
    return {
        "invocation": COUNT,
        "python": sys.version.split()[0],
        "requests": requests.__version__,
        "url": req.url,
        "request_id": context.aws_request_id,
        "warm_for_s": round(time.time() - LOADED, 3),
    }
