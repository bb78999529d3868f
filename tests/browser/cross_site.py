#!/usr/bin/env python3
"""W12: a cross-site form post in a real browser carries no session cookie. Headless Chromium
logs in on BASE_URL (http://localhost:PORT), reads the account page's CSRF token, then opens
an attacker's page on another site (http://127.0.0.1:OTHER, served here) whose form posts
"sign out everywhere else" to pbxguard with that very token. The browser leaves the
SameSite=Strict cookie out, so nothing happens; the same button on the account page works.
Prints "cross-site refused" and "same-site done" as it goes; the Rust test checks the
sessions.

    cross_site.py BASE_URL USER PASSWORD OUTDIR PROFILE_DIR
"""
import http.server
import sys
import threading
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def attacker(target, csrf):
    page = (
        "<!doctype html><title>win a prize</title>"
        f"<form id=f method=post action='{target}/account/sessions/revoke-others'>"
        f"<input type=hidden name=csrf value='{csrf}'></form>"
        "<script>document.getElementById('f').submit()</script>"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    # Threaded: Chromium's speculative idle connections must not hold the one handler.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    base, user, password, outdir, profile = sys.argv[1:6]
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--user-data-dir=" + profile):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(base + "/login?next=/account")
        wait.until(EC.visibility_of_element_located((By.ID, "username"))).send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: urlparse(d.current_url).path == "/account")
        csrf = driver.find_element(By.NAME, "csrf").get_attribute("value")
        assert csrf, "no CSRF token on the account page"

        server = attacker(base, csrf)
        other = "http://127.0.0.1:%d/" % server.server_address[1]
        driver.get(other)
        # The form went to pbxguard without the cookie: it lands on the login page.
        wait.until(lambda d: urlparse(d.current_url).netloc == urlparse(base).netloc)
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        driver.save_screenshot(outdir + "/1-cross-site.png")
        landed = urlparse(driver.current_url).path
        assert landed != "/account", "the cross-site post was served as the user: " + landed
        print("cross-site refused at", landed, flush=True)

        # The same action from pbxguard's own page works.
        driver.get(base + "/account")
        wait.until(EC.element_to_be_clickable((By.ID, "revoke-others"))).click()
        wait.until(lambda d: "done=others" in d.current_url)
        driver.save_screenshot(outdir + "/2-same-site.png")
        print("same-site done", flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
