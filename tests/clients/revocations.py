#!/usr/bin/env python3
"""Measures how fast a session revocation made on one pbxguard node is refused by another.

For each of N sessions (logged in on the checking node): the checking node accepts the token
(so the session is in its cache), the revoking node's admin API revokes it, and the checking
node is polled over a kept-alive TLS connection until it answers 401. Prints one JSON object:
{"n", "p50_ms", "p99_ms", "max_ms", "over_1s"}. Python's standard library only.

Usage: revocations.py CHECK_URL CHECK_CA REVOKE_URL REVOKE_CA USER PASSWORD ADMIN ADMIN_PASSWORD N
(an http:// URL takes "-" as its CA: the load harness in benches/ runs plain HTTP on loopback)
"""

import base64
import http.client
import json
import ssl
import sys
import time
import urllib.parse

GIVE_UP = 5.0


def connect(url, ca):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "http":  # the load harness: plain HTTP on loopback, CA "-"
        return http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    ctx = ssl.create_default_context(cafile=ca)
    return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)


def call(conn, method, path, token=None, body=None):
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    for attempt in (1, 2):
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes idle kept-alive connections; open a new one once.
            conn.close()
            if attempt == 2:
                raise


def login(conn, user, password):
    status, payload = call(conn, "POST", "/api/v1/auth/login", body={"username": user, "password": password})
    if status != 200:
        sys.exit(f"login {user}: {status} {payload[:200]!r}")
    return json.loads(payload)["token"]


def sid_of(token):
    claims = token.split(".")[1]
    claims += "=" * (-len(claims) % 4)
    return json.loads(base64.urlsafe_b64decode(claims))["sid"]


def main():
    check_url, check_ca, revoke_url, revoke_ca, user, password, admin, admin_password, n = sys.argv[1:10]
    n = int(n)
    check = connect(check_url, check_ca)
    revoke = connect(revoke_url, revoke_ca)
    admin_token = login(revoke, admin, admin_password)
    tokens = [login(check, user, password) for _ in range(n)]
    latencies = []
    for token in tokens:
        status, payload = call(check, "GET", "/api/v1/auth/check", token)
        if status != 200:
            sys.exit(f"check before revocation: {status} {payload[:200]!r}")
        status, payload = call(revoke, "DELETE", "/api/v1/admin/sessions/" + sid_of(token), admin_token)
        if status not in (200, 204):
            sys.exit(f"revoke: {status} {payload[:200]!r}")
        revoked_at = time.monotonic()
        while True:
            status, _ = call(check, "GET", "/api/v1/auth/check", token)
            waited = time.monotonic() - revoked_at
            if status == 401:
                latencies.append(waited)
                break
            if status != 200:
                sys.exit(f"check after revocation: {status}")
            if waited > GIVE_UP:
                latencies.append(waited)
                break
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 2)

    print(json.dumps({
        "n": len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "over_1s": sum(1 for x in latencies if x > 1.0),
    }))


if __name__ == "__main__":
    main()
