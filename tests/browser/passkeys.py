#!/usr/bin/env python3
"""Passkeys in headless Chromium with its virtual authenticator (WebDriver's WebAuthn API):
ana adds a passkey on /account (and gets her first recovery codes), logs in with password +
passkey on /login, turns on passwordless login and logs in with the passkey alone. Then the
refusals, each checked against pbxguard's API from the page's own origin: a replayed
assertion, an assertion for another user's login (bob), a passkey removed after its login
started, and a cloned authenticator whose counter is behind. Screenshots go to OUTDIR; any
Content-Security-Policy violation in the browser's log fails the run.

    passkeys.py BASE_URL PASSWORD OUTDIR PROFILE_DIR
"""
import sys
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import (
    Credential, Protocol, Transport, VirtualAuthenticatorOptions)
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

API = """
const [method, path, body, done] = arguments;
fetch(path, {method, headers: {"Content-Type": "application/json"},
             body: body === null ? undefined : JSON.stringify(body), credentials: "same-origin"})
  .then(async (r) => { let j = null; try { j = await r.json(); } catch (_) {} done([r.status, j]); })
  .catch((e) => done([0, String(e)]));
"""

GET = """
const [options, done] = arguments;
window.pbxguardPasskey.get(options)
  .then((c) => done({ok: c})).catch((e) => done({err: e.name + ": " + e.message}));
"""


def authenticator():
    return VirtualAuthenticatorOptions(
        protocol=Protocol.CTAP2, transport=Transport.USB, has_resident_key=True,
        has_user_verification=True, is_user_verified=True)


def main():
    base, password, outdir, profile = sys.argv[1:5]
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--user-data-dir=" + profile,
                "--window-size=1000,1400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_script_timeout(30)
    wait = WebDriverWait(driver, 20)
    visible = lambda i: wait.until(EC.visibility_of_element_located((By.ID, i)))

    def at_account(d):
        return urlparse(d.current_url).path == "/account"

    def api(method, path, body=None):
        return driver.execute_async_script(API, method, path, body)

    def sign(options):
        got = driver.execute_async_script(GET, options)
        assert "ok" in got, got
        return got["ok"]

    def no_csp_violation(where):
        for entry in driver.get_log("browser"):
            text = entry.get("message", "")
            if "Content Security Policy" in text or "Refused to" in text:
                raise AssertionError("CSP violation on %s: %s" % (where, text))

    def login_page(user):
        driver.delete_all_cookies()
        driver.get(base + "/login?next=/account")
        visible("username").send_keys(user)

    def password_login(user):
        login_page(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "login").click()

    def add_passkey(name, shot):
        driver.get(base + "/account")
        form = visible("add-passkey")
        wait.until(lambda d: d.find_element(By.ID, "add-passkey-submit").is_enabled())
        form.find_element(By.NAME, "name").send_keys(name)
        form.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.ID, "add-passkey-submit").click()
        return wait.until(lambda d: (d.find_element(By.ID, "new-codes").is_displayed() and "codes")
                          or ("done=passkey" in d.current_url and "added"))

    def started(user):
        """A password login of `user` that waits for its second factor."""
        status, body = api("POST", "/api/v1/auth/login", {"username": user, "password": password})
        assert status == 200 and body["status"] == "mfa_required", (status, body)
        assert "webauthn" in body["methods"], body
        return body

    try:
        driver.add_virtual_authenticator(authenticator())

        # ana: password login, then a passkey from the account page; her first second factor,
        # so her recovery codes are shown once.
        password_login("ana")
        wait.until(at_account)
        no_csp_violation("/account")
        assert add_passkey("work laptop", "1") == "codes"
        codes = driver.find_elements(By.CSS_SELECTOR, "#new-recovery-codes li")
        assert len(codes) == 10, len(codes)
        driver.save_screenshot(outdir + "/1-passkey-added.png")
        driver.get(base + "/account")
        assert "work laptop" in visible("passkeys").text
        driver.save_screenshot(outdir + "/2-account-passkeys.png")
        no_csp_violation("the passkey registration")

        # Password, then the passkey, on /login.
        password_login("ana")
        visible("passkey-submit").click()
        wait.until(at_account)
        driver.save_screenshot(outdir + "/3-logged-in-with-passkey.png")
        no_csp_violation("the passkey login")

        # Passwordless: opted in on the account page, then the name and the passkey alone.
        form = visible("passwordless-form")
        form.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.ID, "passwordless-on").click()
        wait.until(lambda d: "done=passwordless-on" in d.current_url)
        login_page("ana")
        driver.find_element(By.ID, "passkey-login").click()
        visible("passkey-submit").click()
        wait.until(at_account)
        driver.save_screenshot(outdir + "/4-passwordless.png")
        no_csp_violation("the passwordless login")

        # An unknown name gets an answer of the same shape; its decoy credential is on no
        # authenticator, so the browser finds nothing to sign with.
        real = api("POST", "/api/v1/auth/passkey/login", {"username": "ana"})[1]
        decoy = api("POST", "/api/v1/auth/passkey/login", {"username": "nobody"})[1]
        shape = lambda b: (sorted(b), sorted(b["webauthn"]["publicKey"]),
                           [sorted(c) for c in b["webauthn"]["publicKey"]["allowCredentials"]])
        assert shape(real) == shape(decoy), (real, decoy)
        got = driver.execute_async_script(GET, decoy["webauthn"])
        assert "err" in got and "NotAllowedError" in got["err"], got

        # A replayed assertion: the login it finished is used up, and another login's
        # challenge differs.
        first = started("ana")
        cred = sign(first["webauthn"])
        done = {"mfa_token": first["mfa_token"], "method": "webauthn", "credential": cred}
        status, body = api("POST", "/api/v1/auth/mfa", done)
        assert status == 200 and body["status"] == "ok", (status, body)
        status, body = api("POST", "/api/v1/auth/mfa", done)
        assert status == 401, (status, body)
        second = started("ana")
        status, body = api("POST", "/api/v1/auth/mfa", dict(done, mfa_token=second["mfa_token"]))
        assert status == 401, (status, body)

        # bob: his own passkey (on the same authenticator). Ana's passkey signing bob's
        # challenge, and ana's assertion offered for bob's login, are both refused.
        password_login("bob")
        wait.until(at_account)
        assert add_passkey("key", "bob") == "codes"
        bob = started("bob")
        ana = started("ana")
        forged = dict(bob["webauthn"])
        forged["publicKey"] = dict(bob["webauthn"]["publicKey"],
                                   allowCredentials=ana["webauthn"]["publicKey"]["allowCredentials"])
        ana_on_bob = sign(forged)
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": bob["mfa_token"], "method": "webauthn", "credential": ana_on_bob})
        assert status == 401, (status, body)
        bob = started("bob")
        ana_cred = sign(ana["webauthn"])
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": bob["mfa_token"], "method": "webauthn", "credential": ana_cred})
        assert status == 401, (status, body)
        # Bob's own passkey still works (the refusals counted, but stay below the lockout).
        bob = started("bob")
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": bob["mfa_token"], "method": "webauthn",
                            "credential": sign(bob["webauthn"])})
        assert status == 200, (status, body)

        # A cloned authenticator: ana's credential copied out with its counter, the original
        # used once more, then the copy (counter behind) on a fresh authenticator: refused.
        ana_id = ana["webauthn"]["publicKey"]["allowCredentials"][0]["id"]
        saved = [c.to_dict() for c in driver.get_credentials()]
        copy = next(c for c in saved if c["credentialId"].rstrip("=") == ana_id)
        login = started("ana")
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": login["mfa_token"], "method": "webauthn",
                            "credential": sign(login["webauthn"])})
        assert status == 200, (status, body)
        driver.remove_virtual_authenticator()
        driver.add_virtual_authenticator(authenticator())
        driver.add_credential(Credential.from_dict(copy))
        login = started("ana")
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": login["mfa_token"], "method": "webauthn",
                            "credential": sign(login["webauthn"])})
        assert status == 401 and body["error"] == "passkey_refused", (status, body)

        # A passkey removed after the login started: the login's challenge still names it,
        # the database no longer has it.
        driver.remove_virtual_authenticator()
        driver.add_virtual_authenticator(authenticator())
        copy["signCount"] = 1000
        driver.add_credential(Credential.from_dict(copy))
        login = started("ana")
        password_login("ana")
        visible("passkey-submit").click()
        wait.until(at_account)
        status, body = api("GET", "/api/v1/auth/passkeys")
        assert status == 200 and len(body["passkeys"]) == 1 and body["passwordless"], (status, body)
        key_id = body["passkeys"][0]["id"]
        status, body = api("DELETE", "/api/v1/auth/passkeys/" + key_id, {"password": "wrong one!"})
        assert status == 401, (status, body)
        status, body = api("DELETE", "/api/v1/auth/passkeys/" + key_id, {"password": password})
        assert status == 204, (status, body)
        status, body = api("POST", "/api/v1/auth/mfa",
                           {"mfa_token": login["mfa_token"], "method": "webauthn",
                            "credential": sign(login["webauthn"])})
        assert status == 401, (status, body)
        status, body = api("GET", "/api/v1/auth/passkeys")
        assert status == 200 and body["passkeys"] == [] and not body["passwordless"], (status, body)
        driver.get(base + "/account")
        driver.save_screenshot(outdir + "/5-passkey-removed.png")
        no_csp_violation("the end")
        print("passkeys: all steps passed")
    except Exception:
        try:
            driver.save_screenshot(outdir + "/failure.png")
            print(driver.page_source[:4000])
        except Exception:
            pass
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
