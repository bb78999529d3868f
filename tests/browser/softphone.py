#!/usr/bin/env python3
"""Drives a page that uses pbxguard's softphone module (/sip/softphone.js) in headless Chromium
(Debian's chromium + chromedriver) with fake media devices. The test sends one JSON command per
line on stdin and reads one JSON answer per line on stdout:

    {"cmd": "open", "path": "/phone.html"}          -> {"ok": true}
    {"cmd": "login", "user": U, "password": P}       -> {"ok": true, "token": T}  (fetch, same origin)
    {"cmd": "click", "id": "connect"}                -> {"ok": true}
    {"cmd": "type", "id": "target", "text": "600"}   -> {"ok": true}
    {"cmd": "wait", "type": "registered", "count": 1, "timeout": 20}
                                                     -> {"ok": true, "event": {...}, "waited_ms": N}
    {"cmd": "stats", "seconds": 2}                   -> {"ok": true, "first": {...}, "second": {...}}
    {"cmd": "events"}                                -> {"ok": true, "events": [...]}
    {"cmd": "collect", "dir": D}                     -> {"ok": true, ...}: what the browser got, in D
    {"cmd": "quit"}

    softphone.py BASE_URL PROFILE_DIR SPKI_SHA256_BASE64 SHOT_DIR

The page's certificate is trusted by its SPKI hash only (--ignore-certificate-errors-spki-list),
not by ignoring certificate errors in general.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

EVENTS = ["registered", "unregistered", "registrationFailed", "disconnected", "reconnecting",
          "incoming", "calling", "accepted", "confirmed", "ended", "failed", "sessionEnded"]

# Records every event of window.phone (the page exposes it) with a time stamp.
HOOK = """
const types = arguments[0];
if (!window.__events) {
  window.__events = [];
  for (const type of types) {
    window.phone.addEventListener(type, (e) => {
      const { session, ...detail } = e.detail || {};
      window.__events.push({ type, at: Date.now(), detail: JSON.parse(JSON.stringify(detail)) });
    });
  }
}
"""

# Two getStats samples of the newest call's RTCPeerConnection.
STATS = """
const [seconds, done] = arguments;
const sessions = [...window.phone.sessions];
const pc = sessions.length ? sessions[sessions.length - 1].connection : null;
if (!pc) { done({ error: 'no call' }); return; }
const sample = async () => {
  const out = { at: Date.now(), connectionState: pc.connectionState,
                iceConnectionState: pc.iceConnectionState, bytesSent: 0, bytesReceived: 0,
                packetsSent: 0, packetsReceived: 0, dtlsState: null, remote: null };
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.bytesSent += s.bytesSent; out.packetsSent += s.packetsSent;
    }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.bytesReceived += s.bytesReceived; out.packetsReceived += s.packetsReceived;
    }
    if (s.type === 'transport') out.dtlsState = s.dtlsState;
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
      const r = report.get(s.remoteCandidateId);
      if (r) out.remote = `${r.address}:${r.port}`;
    }
  });
  return out;
};
(async () => {
  const first = await sample();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  done({ first, second: await sample() });
})().catch((e) => done({ error: String(e) }));
"""

LOGIN = """
const [user, password, done] = arguments;
fetch('/api/v1/auth/login', { method: 'POST', credentials: 'same-origin',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ username: user, password }) })
  .then(async (r) => done({ status: r.status, body: await r.json() }))
  .catch((e) => done({ error: String(e) }));
"""


class Browser:
    def __init__(self, base, profile, spki, shots):
        self.base = base
        self.shots = shots
        self.perf = []  # every DevTools performance-log message so far
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--user-data-dir=" + profile,
                    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                    "--autoplay-policy=no-user-gesture-required",
                    "--ignore-certificate-errors-spki-list=" + spki,
                    "--window-size=900,700"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        self.driver.set_script_timeout(30)
        self.driver.execute_cdp_cmd("Network.enable", {})

    def drain(self):
        for entry in self.driver.get_log("performance"):
            self.perf.append(json.loads(entry["message"])["message"])

    def events(self):
        return self.driver.execute_script("return window.__events || []")

    def handle(self, c):
        d = self.driver
        cmd = c["cmd"]
        if cmd == "open":
            d.get(self.base + c["path"])
            end = time.time() + 15
            while not d.execute_script("return !!window.phone"):
                if time.time() > end:
                    raise RuntimeError("the page never created window.phone")
                time.sleep(0.05)
            d.execute_script(HOOK, EVENTS)
            return {}
        if cmd == "login":
            r = d.execute_async_script(LOGIN, c["user"], c["password"])
            if r.get("status") != 200:
                raise RuntimeError("login failed: %r" % r)
            return {"token": r["body"]["token"]}
        if cmd == "click":
            d.find_element(By.ID, c["id"]).click()
            return {}
        if cmd == "type":
            el = d.find_element(By.ID, c["id"])
            el.clear()
            el.send_keys(c["text"])
            return {}
        if cmd == "wait":
            start = time.time()
            end = start + c.get("timeout", 20)
            while True:
                seen = [e for e in self.events() if e["type"] == c["type"]]
                if len(seen) >= c.get("count", 1):
                    return {"event": seen[c.get("count", 1) - 1],
                            "waited_ms": int((time.time() - start) * 1000)}
                if time.time() > end:
                    raise RuntimeError("no %s #%d within %ss; events: %s" % (
                        c["type"], c.get("count", 1), c.get("timeout", 20),
                        json.dumps(self.events())))
                time.sleep(0.05)
        if cmd == "stats":
            r = d.execute_async_script(STATS, c.get("seconds", 2))
            if "error" in r:
                raise RuntimeError(r["error"])
            return r
        if cmd == "events":
            return {"events": self.events()}
        if cmd == "shot":
            d.save_screenshot(os.path.join(self.shots, c["name"]))
            return {}
        if cmd == "collect":
            return self.collect(c["dir"])
        raise RuntimeError("unknown command %r" % cmd)

    def collect(self, out):
        """Everything the browser received and sent that can carry a secret: HTTP response
        bodies, WebSocket frames both ways, the page as rendered. One file per kind in `out`."""
        self.drain()
        d = self.driver
        # A body can be read once its response finished loading: one nobody reads (the module
        # does not read a refused ticket's) may still be arriving. Wait for every response.
        def unfinished():
            done = {m["params"]["requestId"] for m in self.perf
                    if m.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
            return [m for m in self.perf if m.get("method") == "Network.responseReceived"
                    and m["params"]["requestId"] not in done]
        end = time.time() + 5
        while unfinished() and time.time() < end:
            time.sleep(0.1)
            self.drain()
        bodies, sent, got, sockets, handshakes = [], [], [], [], []
        for m in self.perf:
            method, p = m.get("method"), m.get("params", {})
            if method == "Network.responseReceived":
                if not p["response"]["url"].startswith(("http:", "https:")):
                    continue  # the browser's own pages (the new tab before the first load)
                try:
                    b = d.execute_cdp_cmd("Network.getResponseBody", {"requestId": p["requestId"]})
                    bodies.append("%s %s\n%s" % (p["response"]["status"], p["response"]["url"],
                                                 b.get("body", "")))
                except Exception as e:  # evicted from the buffer: say so, the test counts them
                    bodies.append("%s %s\n(no body: %s)" % (p["response"]["status"],
                                                            p["response"]["url"],
                                                            str(e).splitlines()[0]))
            elif method == "Network.webSocketCreated":
                sockets.append(p["url"])
            elif method == "Network.webSocketHandshakeResponseReceived":
                handshakes.append(p["response"]["status"])
            elif method == "Network.webSocketFrameSent":
                sent.append(p["response"]["payloadData"])
            elif method == "Network.webSocketFrameReceived":
                got.append(p["response"]["payloadData"])
        files = {"http-bodies.txt": bodies, "ws-sent.txt": sent, "ws-received.txt": got,
                 "page.html": [d.page_source],
                 "console.txt": [json.dumps(x) for x in d.get_log("browser")]}
        for name, items in files.items():
            with open(os.path.join(out, name), "w") as f:
                f.write("\n\x1e\n".join(items))
        return {"responses": len(bodies), "ws_sent": len(sent), "ws_received": len(got),
                "sockets": sockets, "handshakes": handshakes}

    def quit(self):
        self.driver.quit()


def main():
    base, profile, spki, shots = sys.argv[1:5]
    b = Browser(base, profile, spki, shots)
    try:
        for line in sys.stdin:
            c = json.loads(line)
            if c["cmd"] == "quit":
                break
            try:
                r = b.handle(c)
                r["ok"] = True
            except Exception as e:  # the test prints it with its own context
                try:
                    b.driver.save_screenshot(os.path.join(shots, "failure.png"))
                except Exception:
                    pass
                r = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            b.drain()
            print(json.dumps(r), flush=True)
    finally:
        b.quit()


if __name__ == "__main__":
    main()
