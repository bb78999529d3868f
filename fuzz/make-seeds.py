#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the tests' own messages.

Run from anywhere: python3 fuzz/make-seeds.py. The output is committed, so a fuzz run and
`cargo test --test fuzz_corpus` start from the same inputs; re-run after adding test data.
Sources: tests/data/sip-torture (RFC 4475 / 5118 messages), the SDP offers of
tests/common/sip.rs and src/sip/sdp_tests.rs, the AMI actions of tests/ami.rs, etc/*.toml, and
the Asterisk configs of etc/asterisk and tests/data/asterisk.
"""
import hashlib
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")

KEY_128 = "f99r/6vXQ3OwLK70/JDbkd7D9fuhwAVXk98J/G9y"
FP = "99:3B:8C:49:83:59:3D:B3:2E:8B:57:B0:54:10:DC:8B:3E:41:30:9A:EE:5C:0E:88:95:B2:44:8C:30:32:63:E8"
HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
SDPS = [
    HEAD + f"m=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\na=sendrecv\r\n",
    HEAD + f"m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n",
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    f"a=fingerprint:sha-256 {FP}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\na=setup:actpass\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n",
    HEAD + "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
    HEAD + f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} UNENCRYPTED_SRTP\r\n",
    HEAD + "m=image 4002 udptl t38\r\na=T38FaxVersion:0\r\n",
    HEAD + f"m=audio 0 RTP/AVP 0\r\nm=video 4004 RTP/SAVPF 96\r\na=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:{KEY_128}\r\n",
    "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 4000 RTP/SAVP 0\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_128}|2^20|1:4\n",
]


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sip_request(method, body=b"", ctype="application/sdp", extra=""):
    head = (
        f"{method} sip:1002@pbx.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK776asdhds;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\n"
        "To: <sip:1002@pbx.example.com>\r\n"
        "Call-ID: a84b4c76e66710@192.0.2.10\r\n"
        f"CSeq: 314159 {method}\r\n"
        "Contact: <sip:1001@192.0.2.10:5061;transport=tls>\r\n"
        "User-Agent: baresip v1.0.0\r\n"
        f"{extra}"
    )
    if body:
        head += f"Content-Type: {ctype}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def ws_frame(payload, opcode=1, fin=True):
    """A client frame with a zero mask key, so the payload stays readable for mutation."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + payload


def sip_seeds():
    messages = []
    torture = os.path.join(ROOT, "tests", "data", "sip-torture")
    for sub in sorted(os.listdir(torture)):
        path = os.path.join(torture, sub)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), "rb") as f:
                    messages.append((f"{sub}-{name}", f.read()))
    messages.append(("invite-sdes", sip_request("INVITE", SDPS[0].encode())))
    messages.append(("invite-dtls", sip_request("INVITE", SDPS[2].encode())))
    messages.append(("invite-plain", sip_request("INVITE", SDPS[3].encode())))
    messages.append(("register", sip_request("REGISTER", extra="Expires: 600\r\nSupported: path, outbound\r\n")))
    messages.append(("message", sip_request("MESSAGE", b"hello", "text/plain")))
    multipart = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + SDPS[0].encode()
        + b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n"
    )
    messages.append(("invite-multipart", sip_request("INVITE", multipart, "multipart/mixed;boundary=b1")))
    for name, raw in messages:
        write("sip_stream", name, raw)
        write("sip_websocket", name, ws_frame(raw))
    # Several messages and a keep-alive in one stream; a message cut over two frames.
    write("sip_stream", "pipelined", b"\r\n\r\n" + messages[-2][1] + messages[-3][1])
    reg = sip_request("REGISTER")
    write("sip_websocket", "fragmented", ws_frame(reg[:40], 1, False) + ws_frame(reg[40:], 0, True))
    write("sip_websocket", "binary-and-ping", ws_frame(b"", 9) + ws_frame(reg, 2))


def ami_seeds():
    actions = [
        "Action: Ping\r\nActionID: 1\r\n\r\n",
        "Action: Originate\r\nChannel: PJSIP/1001\r\nContext: from-internal\r\nExten: 1002\r\nPriority: 1\r\nAsync: true\r\n\r\n",
        "Action: Originate\r\nChannel: Local/1@x\r\nApplication: System\r\nData: touch /tmp/x\r\n\r\n",
        "Action: Originate\r\nChannel: Local/1@x\r\nApplication: Queue\r\nData: q,,,,,agi://h\r\n\r\n",
        "Action: Setvar\r\nVariable: X\r\nValue: ${SHELL(id)}\r\n\r\n",
        "Action: Originate\r\nChannel: Local/1@x\r\nVariable: A=${FI\\LE(/etc/passwd)}\r\n\r\n",
        "Action: Command\r\nCommand: module unload res_pjsip.so\r\n\r\n",
        "Action: Command\r\nCommand: \"core\" show channels\r\n\r\n",
        "Action: GetConfig\r\nFilename: ../../etc/shadow\r\n\r\n",
        "Action: GetConfig\r\nFilename: manager.conf\r\n\r\n",
        "Action: UpdateConfig\r\nSrcFilename: extensions.conf\r\nDstFilename: extensions.conf\r\n\r\n",
        "Action: QueueStatus\r\nActionID: a\r\naction: Originate\r\n\r\n",
        "Action: Events\r\nEventMask: call,agent\r\n\r\n",
        "Action: Redirect\r\nChannel: PJSIP/1001-0001\r\nExten: 2\r\nContext: c\r\nPriority: 1\r\n\r\n",
        "Action: Status\nActionID: lf-only\n\n",
        "Action: Ping\r\nX: a\0hidden\r\n\r\n",
        "Action: MixMonitor\r\nChannel: PJSIP/1001-0001\r\nFile: x.wav\r\nCommand: rm -rf /\r\n\r\n",
    ]
    for i, a in enumerate(actions):
        write("ami_client", f"action-{i:02}", a)
    write("ami_client", "pipelined", "".join(actions[:4]))
    write("ami_client", "long-line", "Action: Ping\r\nX: " + "a" * 1030 + "\r\n\r\n")


def sdp_seeds():
    for i, s in enumerate(SDPS):
        write("sdp_policy", f"sdp-{i:02}", s)
    write("sdp_policy", "multipart",
          "--fuzz\r\nContent-Type: application/sdp\r\n\r\n" + SDPS[0] + "\r\n--fuzz--\r\n")


def recording_seeds():
    write("recording_token", "forge", b"!" + bytes(range(16)) + struct.pack(">q", 1_900_000_000) + b"\x05A")
    write("recording_token", "headers",
          "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
          "2026/11/29/in-1001-1764420000.wav\nbytes=0-99,200-\n\"65f1-10\"\n\n\nMon, 01 Jan 2024 00:00:00 GMT\n")
    write("recording_token", "traversal", "x\n2026/../../etc/passwd\nbytes=-500\n")
    write("recording_token", "encoded", "x\n%2e%2e%2fetc/passwd\nbytes=5-1\n")
    write("recording_token", "link-id", "0123456789abcdef0123456789abcdef\nmonitor/q.wav\nbytes=0-0,0-0,0-0\n")


def check_seeds():
    base = "/api/v1/auth/check"
    write("check_request", "bearer", f"{base}\nAuthorization: Bearer @T@\n")
    write("check_request", "cookie", f"{base}\nCookie: a=b; pbxguard_session=@T@; c=d\n")
    write("check_request", "route-admin", f"{base}\nAuthorization: Bearer @T@\nX-Original-URI: /monitoring/..%2fadmin/users\n")
    write("check_request", "route-monitoring", f"{base}\nAuthorization: Bearer @T@\nX-Original-URI: /monitoring/live?x=/admin\n")
    write("check_request", "role-query", f"{base}?role=manager\nCookie: pbxguard_session=@T@\n")
    write("check_request", "role-header", f"{base}\nAuthorization: bearer @T@\nX-Required-Role: supervisor\n")
    write("check_request", "alg-none",
          f"{base}\nAuthorization: Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJzYW0iLCJsdmwiOjl9.\n")
    write("check_request", "two-cookies", f"{base}\nCookie: pbxguard_session=x\nCookie: pbxguard_session=@T@\n")


def realtime_seeds():
    for i, body in enumerate([
        "id=1001",
        "id%20LIKE=10%25&type=endpoint",
        "username=1001&password=s3cret%26x&",
        "id=1001&auth_type=userpass&username=1001",
        "name%20!%3D=x&%E2%82%AC=%ZZ",
        "=novalue&&id",
    ]):
        write("realtime_body", f"body-{i:02}", body)


def config_seeds():
    for name in ["pbxguard.toml", "pbxguard.dev.toml"]:
        with open(os.path.join(ROOT, "etc", name), "rb") as f:
            write("config_file", name, f.read())
    write("config_file", "bad-values",
          "[daemon]\nshutdown_grace = \"99999999999y\"\n[http]\nlisten = \"0.0.0.0:99999\"\n"
          "[auth.routes]\n\"/x\" = \"overlord\"\n[sip]\nrate_per_ip = -1\n")


def audit_seeds():
    order = ["pjsip.conf", "manager.conf", "http.conf", "ari.conf"]
    for label, folder in [("shipped", os.path.join(ROOT, "etc", "asterisk")),
                          ("secure", os.path.join(ROOT, "tests", "data", "asterisk", "secure")),
                          ("insecure", os.path.join(ROOT, "tests", "data", "asterisk", "insecure"))]:
        parts = []
        for name in order:
            p = os.path.join(folder, name)
            parts.append(open(p, "rb").read() if os.path.exists(p) else b"")
        parts.append(b"[extra]\ntype=aor\nmax_contacts=1\n")
        p = os.path.join(folder, "extensions.conf")
        parts.append(open(p, "rb").read() if os.path.exists(p) else b"")
        write("asterisk_conf", label, b"\0".join(parts))
    dialplan = os.path.join(ROOT, "tests", "data", "asterisk", "dialplan")
    parts = [open(os.path.join(dialplan, "pjsip.conf"), "rb").read(), b"", b"", b"",
             open(os.path.join(dialplan, "extensions.d", "loops.conf"), "rb").read(),
             open(os.path.join(dialplan, "extensions.conf"), "rb").read()
             .replace(b"#include extensions.d/*.conf", b"#include extra.conf")]
    write("asterisk_conf", "dialplan", b"\0".join(parts))
    write("asterisk_conf", "includes",
          b"#include extra.conf\n#tryinclude nothing*.conf\n[a](!)\ntype=endpoint\n[b](a)\n;-- x\n--;\n#exec /bin/true\n"
          b"\0[admin]\nsecret=short\nwrite=all\npermit=0.0.0.0/0\n\0[general]\nenabled=yes\nbindaddr=0.0.0.0\n"
          b"\0\0[extra]\n#include pjsip.conf\n"
          b"\0[c]\nsame => n,x\nexten => _[1,1,Goto(c,${EXTEN},1)\ninclude => c\nexten => s,n(x\n"
          b"exten => _.,1,Dial(PJSIP/${EXTEN:-3}@extra&Local/1@c)\nexten => 1,lbl,System()\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    sip_seeds()
    ami_seeds()
    sdp_seeds()
    recording_seeds()
    check_seeds()
    realtime_seeds()
    config_seeds()
    audit_seeds()
    total = sum(len(files) for _, _, files in os.walk(OUT))
    digest = hashlib.sha256()
    for base, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            digest.update(open(os.path.join(base, name), "rb").read())
    print(f"{total} seed files, sha256 {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
