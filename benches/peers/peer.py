"""One client of the emulator's OAuth gateway, as plants write them today, for `cargo xtask peers`.

Usage: peer.py MODE TOKEN_URL GATEWAY_URL CLIENT_ID CLIENT_SECRET USER PASSWORD SECONDS INTERVAL
MODE: naive | hourly | authlib | requests-oauthlib | google-auth | shiftkey-broker
Every INTERVAL seconds it calls the gateway once, the way a sync cycle would, and counts what the
calling code saw: ok, a 401 (the library did not heal it), or another failure. Prints JSON.
"""
import datetime
import json
import os
import sys
import time

import requests

mode, token_url, gateway, cid, secret, user, password = sys.argv[1:8]
seconds, interval = float(sys.argv[8]), float(sys.argv[9])
body = {"header": {"state": {}, "policy": {}}, "body": {}}


def password_grant():
    r = requests.post(token_url, auth=(cid, secret),
                      data={"grant_type": "password", "username": user, "password": password})
    r.raise_for_status()
    return r.json()


def refresh_grant(refresh_token):
    r = requests.post(token_url, auth=(cid, secret),
                      data={"grant_type": "refresh_token", "refresh_token": refresh_token})
    r.raise_for_status()
    return r.json()


def make_caller():
    """A function that makes one gateway call and returns the HTTP status the caller sees."""
    if mode == "naive":  # log in once, use the token forever
        tok = password_grant()
        return lambda: requests.post(gateway, json=body,
                                     headers={"Authorization": "Bearer " + tok["access_token"]}).status_code
    if mode == "hourly":  # refresh on a timer: "every hour" of an 8 h token, i.e. an 8th of its life
        state = {"tok": password_grant(), "at": time.monotonic()}

        def call():
            period = state["tok"]["expires_in"] / 8
            if time.monotonic() - state["at"] >= period:
                try:
                    state["tok"] = refresh_grant(state["tok"]["refresh_token"])
                except requests.HTTPError:
                    state["tok"] = password_grant()
                state["at"] = time.monotonic()
            return requests.post(gateway, json=body, headers={
                "Authorization": "Bearer " + state["tok"]["access_token"]}).status_code
        return call
    if mode == "authlib":  # OAuth2Session refreshes an expired token before a request
        from authlib.integrations.requests_client import OAuth2Session
        s = OAuth2Session(cid, secret, token_endpoint=token_url)
        s.fetch_token(token_url, username=user, password=password)
        return lambda: s.post(gateway, json=body).status_code
    if mode == "requests-oauthlib":  # auto_refresh_url refreshes once expires_at has passed
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # the emulator is plain HTTP on loopback
        from oauthlib.oauth2 import LegacyApplicationClient
        from requests_oauthlib import OAuth2Session
        s = OAuth2Session(client=LegacyApplicationClient(client_id=cid), auto_refresh_url=token_url,
                          auto_refresh_kwargs={"client_id": cid, "client_secret": secret},
                          token_updater=lambda t: None)
        s.fetch_token(token_url=token_url, username=user, password=password,
                      client_id=cid, client_secret=secret)
        return lambda: s.post(gateway, json=body).status_code
    if mode == "google-auth":  # AuthorizedSession refreshes early and once on a 401
        import google.auth.transport.requests
        import google.oauth2.credentials
        tok = password_grant()
        creds = google.oauth2.credentials.Credentials(
            tok["access_token"], refresh_token=tok["refresh_token"], token_uri=token_url,
            client_id=cid, client_secret=secret,
            expiry=datetime.datetime.utcnow() + datetime.timedelta(seconds=tok["expires_in"]))
        s = google.auth.transport.requests.AuthorizedSession(creds)
        return lambda: s.post(gateway, json=body).status_code
    if mode == "shiftkey-broker":  # the broker's 20-line client, reporting a rejected token
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
        import shiftkey_broker

        served = [0]  # the newest generation the gateway accepted

        def call():
            tok, gen = shiftkey_broker.token("gw")
            st = requests.post(gateway, json=body, headers={"Authorization": "Bearer " + tok}).status_code
            if st == 401:
                tok, gen = shiftkey_broker.rejected("gw", gen, gen <= served[0])
                st = requests.post(gateway, json=body, headers={"Authorization": "Bearer " + tok}).status_code
            if 200 <= st < 400:
                served[0] = max(served[0], gen)
            return st
        return call
    raise SystemExit("unknown mode " + mode)


counts = {"ok": 0, "unauthorized": 0, "other": 0}
call = make_caller()
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        status = call()
        key = "ok" if status == 200 else "unauthorized" if status == 401 else "other"
    except Exception:  # noqa: BLE001 - a failed refresh inside a library surfaces here
        key = "other"
    counts[key] += 1
    time.sleep(interval)
print(json.dumps(counts))
