// The login page: password, then the second factor the server asks for. Talks only to
// pbxguard's own API; the session cookie it sets is HttpOnly, so nothing here keeps the token.
"use strict";

const $ = (id) => document.getElementById(id);
let mfaToken = null;
let enrollToken = null;
let webauthnOptions = null;

function show(id) {
  for (const s of ["password-step", "passkey-step", "totp-step", "recovery-step", "enroll-step", "codes-step", "email-step", "done"]) {
    $(s).hidden = s !== id;
  }
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function api(path, body, bearer) {
  const headers = { "Content-Type": "application/json" };
  if (bearer) headers["Authorization"] = "Bearer " + bearer;
  const r = await fetch(path, {
    method: "POST",
    headers,
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  let data = {};
  try { data = await r.json(); } catch (_) { /* 204 */ }
  if (!r.ok) throw new Error(data.message || ("HTTP " + r.status));
  return data;
}

function loggedIn(data) {
  $("who").textContent = data.user.name;
  $("role").textContent = data.user.role;
  show("done");
  const next = new URLSearchParams(location.search).get("next");
  // Same origin only, decided by the browser's own URL parser (which drops tabs and
  // newlines and reads backslashes as slashes): never an open redirect.
  if (next) {
    let target = null;
    try { target = new URL(next, location.origin); } catch (_) { /* not a URL */ }
    if (target && target.origin === location.origin) {
      setTimeout(() => location.assign(target.pathname + target.search + target.hash), 500);
    }
  }
}

async function afterPassword(data) {
  $("error").hidden = true;
  if (data.status === "ok") return loggedIn(data);
  if (data.status === "mfa_required") {
    mfaToken = data.mfa_token;
    webauthnOptions = data.webauthn || null;
    const recovery = data.methods.includes("recovery");
    $("recovery-offer").hidden = !recovery;
    $("passkey-recovery-offer").hidden = !recovery;
    $("totp-offer").hidden = !data.methods.includes("totp");
    if (data.methods.includes("webauthn") && webauthnOptions && window.pbxguardPasskey
        && window.pbxguardPasskey.supported()) {
      show("passkey-step");
      $("passkey-submit").focus();
    } else if (data.methods.includes("totp")) { show("totp-step"); $("totp-code").focus(); }
    else if (recovery && !data.methods.includes("email")) { show("recovery-step"); $("recovery-code").focus(); }
    else show("email-step");
    return;
  }
  if (data.status === "enroll_required") {
    enrollToken = data.enroll_token;
    mfaToken = data.mfa_token || null;
    $("email-offer").hidden = !mfaToken;
    const e = await api("/api/v1/auth/totp/enroll", {}, enrollToken);
    $("qr").src = "data:image/svg+xml;base64," + btoa(e.qr_svg);
    $("secret").textContent = e.secret;
    show("enroll-step");
    $("enroll-code").focus();
  }
}

// The first recovery codes come with the confirmation, once: shown before the login goes on.
function showCodes(data) {
  const list = $("recovery-codes");
  list.replaceChildren(...data.recovery_codes.map((c) => {
    const li = document.createElement("li");
    li.textContent = c;
    return li;
  }));
  show("codes-step");
  $("codes-saved").onclick = () => loggedIn(data);
}

function guard(fn) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    try { await fn(); } catch (e) { fail(e.message); }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("password-step").addEventListener("submit", guard(async () => {
    const data = await api("/api/v1/auth/login", {
      username: $("username").value.trim(),
      password: $("password").value,
    });
    $("password").value = "";
    await afterPassword(data);
  }));
  $("passkey-login").addEventListener("click", guard(async () => {
    const username = $("username").value.trim();
    if (!username) throw new Error("Enter your user name first.");
    await afterPassword(await api("/api/v1/auth/passkey/login", { username }));
  }));
  $("passkey-submit").addEventListener("click", guard(async () => {
    let credential;
    try {
      credential = await window.pbxguardPasskey.get(webauthnOptions);
    } catch (e) {
      throw new Error(e.name === "NotAllowedError"
        ? "The passkey did not answer (cancelled, timed out, or not a passkey of this account)."
        : e.message);
    }
    loggedIn(await api("/api/v1/auth/mfa", { mfa_token: mfaToken, method: "webauthn", credential }));
  }));
  $("use-totp").addEventListener("click", guard(async () => {
    $("error").hidden = true;
    show("totp-step");
    $("totp-code").focus();
  }));
  $("passkey-use-recovery").addEventListener("click", guard(async () => {
    $("error").hidden = true;
    show("recovery-step");
    $("recovery-code").focus();
  }));
  $("totp-step").addEventListener("submit", guard(async () => {
    loggedIn(await api("/api/v1/auth/mfa", {
      mfa_token: mfaToken, method: "totp", code: $("totp-code").value.trim(),
    }));
  }));
  $("enroll-form").addEventListener("submit", guard(async () => {
    const data = await api("/api/v1/auth/totp/confirm", { code: $("enroll-code").value.trim() }, enrollToken);
    if (Array.isArray(data.recovery_codes)) showCodes(data); else loggedIn(data);
  }));
  $("use-recovery").addEventListener("click", guard(async () => {
    $("error").hidden = true;
    show("recovery-step");
    $("recovery-code").focus();
  }));
  $("recovery-step").addEventListener("submit", guard(async () => {
    loggedIn(await api("/api/v1/auth/mfa", {
      mfa_token: mfaToken, method: "recovery", code: $("recovery-code").value.trim(),
    }));
  }));
  $("use-email").addEventListener("click", guard(async () => { show("email-step"); }));
  $("send-email").addEventListener("click", guard(async () => {
    await api("/api/v1/auth/mfa/email", { mfa_token: mfaToken });
    $("email-sent").hidden = false;
    $("email-code").focus();
  }));
  $("email-step").addEventListener("submit", guard(async () => {
    loggedIn(await api("/api/v1/auth/mfa", {
      mfa_token: mfaToken, method: "email", code: $("email-code").value.trim(),
    }));
  }));
});
