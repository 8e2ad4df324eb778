"""One script of a plant: calls the Teamcenter gateway with a token from the shiftkey broker for
SECONDS, reporting rejected tokens. Prints {"ok", "recovered", "surfaced"} as JSON.

Usage: broker_clients.py REPO_ROOT GATEWAY_URL TOKEN_NAME SECONDS (socket in SHIFTKEY_BROKER_SOCKET)
"""
import json, sys, time, urllib.error, urllib.request

sys.path.insert(0, sys.argv[1] + "/examples/python")
import shiftkey_broker  # noqa: E402

url, name, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
body = json.dumps({"header": {"state": {}, "policy": {}}, "body": {}}).encode()


def call(tok):
    req = urllib.request.Request(url, data=body, headers={
        "Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


counts = {"ok": 0, "recovered": 0, "surfaced": 0, "other": 0}
end = time.monotonic() + seconds
served = 0  # the newest generation the server accepted
while time.monotonic() < end:
    tok, gen = shiftkey_broker.token(name)
    status = call(tok)
    if status == 401:
        tok, gen = shiftkey_broker.rejected(name, gen, gen <= served)
        status = call(tok)
        counts["recovered" if status == 200 else "surfaced"] += 1
    elif status == 200:
        counts["ok"] += 1
    else:
        counts["other"] += 1
    if status == 200:
        served = max(served, gen)
    time.sleep(0.02)
print(json.dumps(counts))
