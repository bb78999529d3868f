// Passkeys (WebAuthn) for the login page and the account page: the only script the console
// has. pbxguard's API speaks WebAuthn's JSON form (binary fields in base64url); the browser
// API wants ArrayBuffers: the two helpers below translate. On /account it drives the "add a
// passkey" form; /login calls window.pbxguardPasskey.get(options).
"use strict";

(() => {
  const b64uToBuf = (s) => {
    const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
  };
  const bufToB64u = (buf) => {
    let s = "";
    for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const idsToBuf = (list) => (list || []).map((c) => ({ ...c, id: b64uToBuf(c.id) }));

  async function create(options) {
    const pk = options.publicKey;
    const publicKey = {
      ...pk,
      challenge: b64uToBuf(pk.challenge),
      user: { ...pk.user, id: b64uToBuf(pk.user.id) },
      excludeCredentials: idsToBuf(pk.excludeCredentials),
    };
    const cred = await navigator.credentials.create({ publicKey });
    const r = cred.response;
    return {
      id: cred.id,
      rawId: bufToB64u(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: bufToB64u(r.attestationObject),
        clientDataJSON: bufToB64u(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined,
      },
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  async function get(options) {
    const pk = options.publicKey;
    const publicKey = {
      ...pk,
      challenge: b64uToBuf(pk.challenge),
      allowCredentials: idsToBuf(pk.allowCredentials),
    };
    const cred = await navigator.credentials.get({ publicKey });
    const r = cred.response;
    return {
      id: cred.id,
      rawId: bufToB64u(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: bufToB64u(r.authenticatorData),
        clientDataJSON: bufToB64u(r.clientDataJSON),
        signature: bufToB64u(r.signature),
        userHandle: r.userHandle ? bufToB64u(r.userHandle) : null,
      },
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  window.pbxguardPasskey = { create, get, supported: () => !!window.PublicKeyCredential };

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = {};
    try { data = await r.json(); } catch (_) { /* no body */ }
    if (!r.ok) throw new Error(data.message || ("HTTP " + r.status));
    return data;
  }

  // The account page's form: name and password, then the authenticator.
  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("add-passkey");
    if (!form) return;
    const status = document.getElementById("passkey-status");
    const say = (text) => { status.textContent = text; status.hidden = false; };
    if (!window.PublicKeyCredential) {
      say("This browser cannot use passkeys.");
      form.querySelector("button").disabled = true;
      return;
    }
    form.querySelector("button").disabled = false;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = form.elements.name.value.trim();
      const password = form.elements.password.value;
      try {
        const start = await post("/api/v1/auth/passkeys/register", { name, password });
        form.elements.password.value = "";
        const credential = await create(start.options);
        const done = await post("/api/v1/auth/passkeys/register/finish", {
          registration_token: start.registration_token,
          credential,
        });
        if (Array.isArray(done.recovery_codes)) {
          const list = document.getElementById("new-recovery-codes");
          list.replaceChildren(...done.recovery_codes.map((c) => {
            const li = document.createElement("li");
            li.textContent = c;
            return li;
          }));
          document.getElementById("new-codes").hidden = false;
          say("Passkey \u201c" + done.passkey.name + "\u201d added. Keep these recovery codes: they are shown once.");
        } else {
          location.assign("/account?done=passkey");
        }
      } catch (e) {
        form.elements.password.value = "";
        say(e.name === "NotAllowedError" ? "The authenticator did not answer (cancelled or timed out)." : e.message);
      }
    });
  });
})();
