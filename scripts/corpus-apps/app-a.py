"""app-a: a tiny requests-based program, the top layer of the app-a corpus image."""
import sys

import charset_normalizer
import requests
import urllib3

req = requests.Request("GET", "https://example.invalid/search", params={"q": "lode", "n": 3}).prepare()
text = "café crème brûlée".encode("utf-8")
print(f"app-a: python {sys.version.split()[0]}, requests {requests.__version__}, urllib3 {urllib3.__version__}")
print(f"app-a: {req.method} {req.url}")
print(f"app-a: detected charset {charset_normalizer.from_bytes(text).best().encoding}")
print("app-a: ok")
