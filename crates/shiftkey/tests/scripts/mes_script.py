"""A plant script as plants write them: a token fetched once at start, sent with `requests` on
every call, for SECONDS. Pointed at a shiftkey proxy, it changes nothing but its base URL.
Prints {"ok", "unauthorized", "other"} as JSON.

Usage: mes_script.py URL SECONDS
"""
import json, sys, time

import requests

api_url, seconds = sys.argv[1], float(sys.argv[2])
token = "the-token-this-script-fetched-at-start"  # long dead by the afternoon
counts = {"ok": 0, "unauthorized": 0, "other": 0}
end = time.monotonic() + seconds
while time.monotonic() < end:
    r = requests.post(api_url, headers={"Authorization": f"Bearer {token}"},
                      json={"header": {"state": {}, "policy": {}}, "body": {}}, timeout=30)
    if r.status_code == 200:
        counts["ok"] += 1
    elif r.status_code == 401:
        counts["unauthorized"] += 1
    else:
        counts["other"] += 1
    time.sleep(0.05)
print(json.dumps(counts))
