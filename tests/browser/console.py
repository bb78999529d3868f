#!/usr/bin/env python3
"""Drives pbxguard's console pages in headless Chromium (Debian's chromium + chromedriver):
log in on /login, then /account, /admin and /admin/settings; save a setting through the form,
have a bad value refused; then the users, sessions, history, bans and AMI pages, and a ban
through its form. Screenshots go to OUTDIR. Any Content-Security-Policy violation
in the browser's log fails the run.

    console.py BASE_URL ADMIN PASSWORD OUTDIR PROFILE_DIR
"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def main():
    base, user, password, outdir, profile = sys.argv[1:6]
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--user-data-dir=" + profile,
                "--window-size=1000,1100"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    wait = WebDriverWait(driver, 20)
    visible = lambda i: wait.until(EC.visibility_of_element_located((By.ID, i)))
    seen_logs = []

    def no_csp_violation(where):
        for entry in driver.get_log("browser"):
            seen_logs.append(entry)
            text = entry.get("message", "")
            if "Content Security Policy" in text or "Refused to" in text:
                raise AssertionError("CSP violation on %s: %s" % (where, text))

    try:
        driver.get(base + "/login?next=/account")
        visible("username").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: d.current_url.endswith("/account"))
        visible("sessions")
        assert "this one" in driver.page_source
        driver.save_screenshot(outdir + "/1-account.png")
        no_csp_violation("/account")

        driver.find_element(By.LINK_TEXT, "Admin").click()
        wait.until(lambda d: d.current_url.endswith("/admin"))
        driver.save_screenshot(outdir + "/2-admin.png")
        no_csp_violation("/admin")

        driver.find_element(By.LINK_TEXT, "Security settings").click()
        field = visible("lockout_threshold")
        driver.save_screenshot(outdir + "/3-settings.png")
        no_csp_violation("/admin/settings")
        field.clear()
        field.send_keys("7")
        driver.find_element(By.ID, "save-settings").click()
        wait.until(lambda d: "done=saved" in d.current_url)
        assert "Saved." in driver.page_source
        assert driver.find_element(By.ID, "lockout_threshold").get_attribute("value") == "7"
        driver.save_screenshot(outdir + "/4-saved.png")

        field = driver.find_element(By.ID, "lockout_window")
        field.clear()
        field.send_keys("forever")
        driver.find_element(By.ID, "save-settings").click()
        err = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "p.error")))
        assert "lockout_window" in err.text, err.text
        driver.save_screenshot(outdir + "/5-refused.png")
        no_csp_violation("the refused form")

        for n, path, marker in ((6, "/admin/users", "create-user"),
                                (7, "/admin/sessions", None),
                                (8, "/admin/history?result=ok", "history-filter"),
                                (9, "/admin/bans", "ban-add"),
                                (10, "/admin/ami", None)):
            driver.get(base + path)
            if marker:
                visible(marker)
            else:
                wait.until(EC.presence_of_element_located((By.TAG_NAME, "table")))
            driver.save_screenshot("%s/%d-%s.png" % (outdir, n, path.split("/")[2].split("?")[0]))
            no_csp_violation(path)
        # A ban through the form, with scripts off being irrelevant: plain HTML forms.
        driver.get(base + "/admin/bans")
        visible("ban-add").find_element(By.NAME, "address").send_keys("198.51.100.7")
        driver.find_element(By.ID, "ban-submit").click()
        wait.until(lambda d: "done=added" in d.current_url)
        assert "198.51.100.7" in driver.page_source
        print("OK")
    except Exception:
        driver.save_screenshot(outdir + "/failure.png")
        sys.stderr.write(driver.page_source[:3000] + "\n")
        sys.stderr.write(repr(seen_logs) + "\n")
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
