"""A Teamcenter script as plants write them: it logs in once with `requests`, then reads for
SECONDS, pausing now and then. Pointed at a shiftkey proxy, it changes nothing but its base URL.
Prints {"ok", "invalid_user", "other"} as JSON.

Usage: tc_script.py BASE_URL USER PASSWORD SECONDS
"""
import json, sys, time

import requests

base, user, password, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
soa = base + "/tc/JsonRestServices/"
session = requests.Session()


def call(operation, body):
    r = session.post(soa + operation, json={"header": {"state": {}, "policy": {}}, "body": body},
                     timeout=30)
    r.raise_for_status()
    return r.json()


login = call("Core-2011-06-Session/login", {"credentials": {
    "user": user, "password": password, "group": "", "role": "", "locale": "",
    "descrimator": "plant-script"}})
if not login.get(".QName", "").endswith("LoginResponse"):
    sys.exit("login failed: " + json.dumps(login))
counts = {"ok": 0, "invalid_user": 0, "other": 0}
end = time.monotonic() + seconds
reads = 0
while time.monotonic() < end:
    answer = call("Core-2007-01-Session/getTCSessionInfo", {})
    qname = answer.get(".QName", "")
    if qname.endswith("GetTCSessionInfoResponse"):
        counts["ok"] += 1
    elif qname.endswith("InvalidUserException"):
        counts["invalid_user"] += 1
    else:
        counts["other"] += 1
    reads += 1
    # Mostly busy; every tenth read a pause longer than the server's idle timeout.
    time.sleep(1.5 if reads % 10 == 0 else 0.05)
call("Core-2006-03-Session/logout", {})
print(json.dumps(counts))
