#!/usr/bin/python3
"""A loopback stand-in for Asterisk's res_pjsip (registrar + answering UAS), stdlib only.

    sip_peer.py --udp 127.0.0.1:0 [--tcp 127.0.0.1:0] --log FILE --users 1001:pw1,1002:pw2,1003:!
                [--realm asterisk] [--authenticate] [--control 127.0.0.1:0] [--ring-delay 0.2]
                [--open-register] [--drop-every N] [--duplicate-every N]
                [--encryption USER:sdes|dtls|no,...]

Prints one JSON line {"udp": port, "tcp": port|null, "control": port|null} once listening.
A user given as NAME:! is answered 403 Forbidden (REGISTER, and anything with --authenticate).

What it copies from pjsip/Asterisk, as seen on the wire:
- responses copy every Via, re-printed in pjsip's parameter order (ttl, rport, maddr, received,
  branch, others) with `received` always added and an empty `rport` filled (sip_endpoint.c);
  UDP responses go to received:rport when rport was asked for, else to received:sent-by-port
  (pjsip_get_response_addr); TCP responses go back on the connection;
- out-of-dialog responses use the Via branch as To-tag (pjsip's stateless responses);
- REGISTER: MD5 digest, qop=auth, Asterisk's "timestamp/hash" nonces living 32 s, 401 for any
  failure (never reveals whether a user exists), 423 under 60 s, expiry capped at 7200 s,
  Path stored per binding and echoed in the 200 (support_path=yes), Date header;
- --authenticate: 401 + WWW-Authenticate (never 407) to every out-of-dialog request but ACK and
  CANCEL until its Authorization is right, as pjsip_distributor does; in-dialog requests
  (re-INVITE, BYE) are never challenged;
- INVITE: 100 Trying, then per request-URI user:
  plain (answer RTP/AVP), busy (486), slow (ring until CANCEL: 200 + 487), early (183 with SDP,
  then 200), a known/registered user (180, 200), anything else 404; 2xx retransmitted over UDP
  until the ACK arrives (RFC 3261 13.3.1.4); MESSAGE answered 202 Accepted like
  res_pjsip_messaging; Contact of answers <sip:127.0.0.1:PORT> (no user part); a=sendonly
  answered recvonly; DTLS actpass answered setup:active; a re-INVITE keeps port and keys;
- requests it sends look like Asterisk 22.10.1's (pjsip Content-Length padding, random CSeq,
  From/To without port, anonymous From and five a=crypto suites on calls it places);
  the differences it was fixed for are listed in tests/peers/README.md.
Faults a real Asterisk does not make on demand (UDP only): --drop-every N drops the first copy of
every Nth new request (not ACK), as a full receive buffer would; --duplicate-every N sends every
Nth final response twice, as a server transaction does for a retransmitted request.
--open-register accepts REGISTER without credentials (an endpoint without `auth`).
Control port (one JSON object per line in, one JSON line back): invite, notify, options, bye,
calls, wait, bindings -- see tests/peers/README.md.
"""
import argparse
import asyncio
import base64
import email.utils
import hashlib
import json
import random
import re
import secrets
import socket
import sys
import time
import uuid

AGENT = "Asterisk PBX 22.10.1"
# What Asterisk 22 with the admin guide's modules prints, plus MESSAGE (res_pjsip_messaging, which
# the peer plays: it answers MESSAGE 202).
ALLOW = ("OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, "
         "PRACK, INFO, MESSAGE")
SUPPORTED = "100rel, timer"              # in answers; requests to a phone add path
SUPPORTED_OUT = "100rel, timer, path"     # support_path = yes on the shipped AORs
SESSION_EXPIRES, MIN_SE = 1800, 90         # res_pjsip_session timers defaults
MWI_TYPE = "application/simple-message-summary"
METHODS = {"REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "SUBSCRIBE",
           "NOTIFY", "UPDATE", "PRACK", "INFO"}
SPECIAL_USERS = {"plain", "busy", "slow", "early"}
NONCE_LIFETIME = 32                      # res_pjsip auth nonce_lifetime default
MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES = 60, 7200, 3600
T1, T2 = 0.5, 4.0
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type", "k": "supported", "o": "event",
           "s": "subject", "e": "content-encoding", "u": "allow-events", "r": "refer-to",
           "b": "referred-by", "x": "session-expires"}
LIST_HEADERS = {"via", "route", "record-route", "path", "contact"}
REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           407: "Proxy Authentication Required", 423: "Interval Too Brief",
           481: "Call/Transaction Does Not Exist", 483: "Too Many Hops", 486: "Busy Here",
           487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
           500: "Server Internal Error", 501: "Not Implemented"}
# Inline key+salt lengths (RFC 4568, RFC 6188, RFC 7714).
SRTP_KEY_BYTES = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30,
                  "F8_128_HMAC_SHA1_80": 30, "AES_192_CM_HMAC_SHA1_80": 38,
                  "AES_192_CM_HMAC_SHA1_32": 38, "AES_256_CM_HMAC_SHA1_80": 46,
                  "AES_256_CM_HMAC_SHA1_32": 46, "AES_CM_256_HMAC_SHA1_80": 46,
                  "AES_CM_256_HMAC_SHA1_32": 46, "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44}
STATIC_CODECS = {"0": "PCMU", "8": "PCMA", "9": "G722"}


# ---------------------------------------------------------------- SIP message model and parsing

class SipMessage:
    """A received message: start line, headers in order (canonical lower name, value), body."""

    def __init__(self, start, headers, body):
        self.start, self.headers, self.body = start, headers, body
        parts = start.split(" ", 2)
        self.is_response = parts[0].upper() == "SIP/2.0"
        if self.is_response:
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError("bad status line")
            self.code, self.reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
        else:
            if len(parts) != 3 or parts[2].upper() != "SIP/2.0" or ":" not in parts[1]:
                raise ValueError("bad request line")
            self.method, self.uri = parts[0].upper(), parts[1]
        self.proto = self.peer = self.conn = None   # filled in by the transport

    def get(self, name, default=""):
        vals = self.values(name)
        return vals[0] if vals else default

    def values(self, name):
        """All values of a header; comma lists split for the headers that are lists."""
        name = name.lower()
        out = []
        for hname, value in self.headers:
            if hname == name:
                out.extend(split_list(value) if name in LIST_HEADERS else [value])
        return out

    @property
    def cseq(self):
        num, _, method = self.get("cseq").partition(" ")
        return int(num) if num.strip().isdigit() else 0, method.strip().upper()

    @property
    def branch(self):
        return header_params(self.get("via")).get("branch", "")


def parse_message(data):
    """Tolerant parse: CRLF or LF, folded lines, compact names; raises ValueError on garbage."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise ValueError("empty message")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            headers.append((COMPACT.get(name, name), value.strip()))
        elif line.strip():
            raise ValueError("bad header line %r" % line[:80])
    msg = SipMessage(lines[0].strip(), headers, body)
    clen = msg.get("content-length")
    if clen:
        if not clen.isdigit() or int(clen) > len(body):
            raise ValueError("bad or too large Content-Length %r" % clen)
        msg.body = body[:int(clen)]
    return msg


def split_list(value):
    """Split a comma list, ignoring commas inside quotes or <...>."""
    out, cur, quote, angle = [], "", False, False
    for ch in value:
        if ch == '"':
            quote = not quote
        elif ch == "<" and not quote:
            angle = True
        elif ch == ">" and not quote:
            angle = False
        if ch == "," and not quote and not angle:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def header_params(value):
    """Parameters after the address or sent-by: '<sip:a@h>;tag=x;lr' -> {'tag': 'x', 'lr': ''}."""
    rest = value[value.find(">", value.find("<")) + 1:] if "<" in value else value
    params = {}
    for item in rest.split(";")[1:]:
        key, _, val = item.strip().partition("=")
        if key:
            params[key.lower()] = val.strip().strip('"')
    return params


def addr_uri(value):
    """URI of a name-addr or addr-spec ('"A" <sip:x@h>;tag=1' -> 'sip:x@h')."""
    if "<" in value:
        return value[value.index("<") + 1:value.index(">")].strip()
    return value.split(";")[0].strip()


def uri_user(uri):
    body = uri.split(":", 1)[1] if ":" in uri else uri
    return body.split("@")[0].split(";")[0] if "@" in body else ""


def uri_target(uri):
    """(host, port, transport) of a SIP URI, with the RFC 3263 defaults for port and transport."""
    scheme, _, body = uri.partition(":")
    params = {k.lower(): v for k, _, v in (p.partition("=") for p in body.split(";")[1:])}
    hostport = body.split(";")[0].split("?")[0].rpartition("@")[2]
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    transport = params.get("transport", "tls" if scheme.lower() == "sips" else "udp").lower()
    default = 5061 if transport == "tls" else 5060
    return host, int(port) if port.isdigit() else default, transport


def content_length(body):
    """pjsip_msg_print: a body's length right-aligned in 5 reserved columns, else ' 0'."""
    n = len(body.encode())
    return "Content-Length: %5d" % n if n else "Content-Length:  0"


def fromto_uri(uri):
    """A URI as pjsip prints it in From/To: no port, no URI parameters (PJSIP_URI_IN_FROMTO_HDR)."""
    scheme, _, rest = uri.partition(":")
    rest = rest.split(";")[0].split("?")[0]
    user, at, hostport = rest.rpartition("@")
    if hostport.startswith("["):
        host = hostport[:hostport.find("]") + 1]
    else:
        host = hostport.partition(":")[0]
    return "<%s:%s%s%s>" % (scheme, user, at, host)


def reprint_via(via, received=None, rport=None):
    """Re-print a Via the way pjsip_via_hdr_print does, optionally stamping received/rport."""
    proto, _, rest = via.partition(" ")
    sent_by, *params = [p.strip() for p in rest.strip().split(";")]
    named = {}
    others = []
    for p in params:
        key, eq, val = p.partition("=")
        if key.lower() in ("ttl", "rport", "maddr", "received", "branch"):
            named[key.lower()] = (eq, val)
        elif key:
            others.append(p)
    if received is not None:
        named["received"] = ("=", received)
        if "rport" in named and not named["rport"][1]:
            named["rport"] = ("=", str(rport))
    out = "SIP/2.0/" + proto.split("/")[-1].upper() + " " + sent_by.replace(" ", "")
    for key in ("ttl", "rport", "maddr", "received", "branch"):
        if key in named:
            out += ";" + key + named[key][0] + named[key][1]
    return out + "".join(";" + o for o in others)


# ---------------------------------------------------------------------------- SDP answer/offer

def random_key(nbytes):
    return base64.b64encode(secrets.token_bytes(nbytes)).decode()


def fingerprint():
    return ":".join("%02X" % b for b in secrets.token_bytes(32))


def ice_lines(port):
    """res_rtp_asterisk's ICE attributes: only when ICE is in use (the offer had it)."""
    return ["a=ice-ufrag:" + secrets.token_hex(16), "a=ice-pwd:" + secrets.token_hex(16),
            "a=candidate:Ha7f0001 1 UDP 2130706431 127.0.0.1 %d typ host" % port]


def dtls_lines(setup, port, ice):
    """What res_pjsip_sdp_rtp writes for DTLS, in its order (fingerprint hash in capitals)."""
    return (["a=connection:new", "a=setup:" + setup, "a=fingerprint:SHA-256 " + fingerprint()]
            + (ice_lines(port) if ice else []))


def sdp_session(sess_id, version=None):
    version = sess_id if version is None else version
    return ["v=0", "o=- %d %d IN IP4 127.0.0.1" % (sess_id, version), "s=Asterisk",
            "c=IN IP4 127.0.0.1", "t=0 0"]


def split_sdp(text):
    """-> session-level lines, [(m-line, [lines of that media section])]."""
    session, media = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("m="):
            media.append((line, []))
        elif line:
            (media[-1][1] if media else session).append(line)
    return session, media


def pick_codecs(fmts, lines):
    """First offered PCMU/PCMA/G722 plus telephone-event if offered: what ulaw/alaw/g722 allows."""
    names = {}
    for line in lines:
        m = re.match(r"a=rtpmap:(\d+)\s+([^/\s]+)", line)
        if m:
            names[m.group(1)] = m.group(2).upper()
    audio = [f for f in fmts if names.get(f, STATIC_CODECS.get(f)) in ("PCMU", "PCMA", "G722")]
    events = [f for f in fmts if names.get(f) == "TELEPHONE-EVENT"]
    return [(f, names.get(f, STATIC_CODECS.get(f))) for f in audio[:1] + events[:1]]


# The answer to a direction (RFC 3264 6.1): a held phone (sendonly) gets recvonly.
ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def media_kind(proto):
    proto = proto.upper()
    if proto.startswith("UDP/TLS/RTP/SAVP"):
        return "dtls"
    return "sdes" if proto in ("RTP/SAVP", "RTP/SAVPF") else "no"


def answer_media(mline, lines, plain, state, encryption=None):
    """Answer one m= section; returns its lines, or None when the stream has to be refused.

    lines: the section's own lines followed by the session-level ones (baresip puts
    a=fingerprint and a=setup at session level, RFC 8842 5.2 allows both). state: what the
    dialog answered before (port, keys): a re-INVITE keeps them, as Asterisk does.
    encryption: the endpoint's one media_encryption (sdes, dtls, no) or None for any."""
    kind, port, proto, *fmts = mline[2:].split()
    codecs = pick_codecs(fmts, lines) if kind == "audio" else []
    if port == "0" or not codecs:
        return None
    if encryption and not plain and media_kind(proto) != encryption:
        return None                       # pjsip: one media_encryption per endpoint -> 488
    crypto = [l for l in lines if l.startswith("a=crypto:")]
    offer_setup = next((l[8:] for l in lines if l.startswith("a=setup:")), "actpass")
    direction = next((l[2:] for l in lines if l[2:] in ("sendrecv", "sendonly", "recvonly",
                                                        "inactive")), "sendrecv")
    port = state.setdefault("port", random.randrange(10000, 20000, 2))
    head, tail = [], []
    if plain:
        proto = "RTP/AVP"
    elif media_kind(proto) == "dtls":
        if not any(l.startswith("a=fingerprint:") for l in lines):
            return None
        ice = any(l.startswith("a=ice-ufrag:") for l in lines)
        head = dtls_lines("passive" if offer_setup == "active" else "active", port, ice)
        if "a=rtcp-mux" in lines:
            tail = ["a=rtcp-mux"]
    elif media_kind(proto) == "sdes":
        if not crypto:
            return None
        tag, suite = crypto[0][9:].split()[:2]
        key = state.setdefault("keys", {}).setdefault(
            suite, random_key(SRTP_KEY_BYTES.get(suite, 30)))
        head = ["a=crypto:%s %s inline:%s" % (tag, suite, key)]
    else:
        proto = "RTP/AVP"         # Asterisk would answer plainly; the edge has to refuse it
    out = ["m=audio %d %s %s" % (port, proto, " ".join(f for f, _ in codecs))] + head
    for fmt, name in codecs:           # G.722 is 8000 in SDP too (RFC 3551 4.5.2)
        if name == "TELEPHONE-EVENT":
            out += ["a=rtpmap:%s telephone-event/8000" % fmt, "a=fmtp:%s 0-16" % fmt]
        else:
            out.append("a=rtpmap:%s %s/8000" % (fmt, name))
    return out + ["a=ptime:20", "a=maxptime:140",
                  "a=" + ANSWER_DIRECTION.get(direction, "sendrecv")] + tail


def answer_sdp(offer, plain=False, state=None, encryption=None):
    """SDP answer to an offer, or None when no stream is acceptable (-> 488).

    state (a dialog's) keeps the session id, version, port and keys across re-INVITEs."""
    state = {} if state is None else state
    sess = state.setdefault("sess", random.randrange(10**8, 10**9))
    state["version"] = state.get("version", sess - 1) + 1
    out, accepted = sdp_session(sess, state["version"]), 0
    session, sections = split_sdp(offer)
    for i, (mline, lines) in enumerate(sections):
        media = answer_media(mline, lines + session, plain, state.setdefault(i, {}), encryption)
        if media is None:
            kind, _, proto, *fmts = mline[2:].split() + ["0", "RTP/AVP", "0"]
            out.append("m=%s 0 %s %s" % (kind, proto, (fmts or ["0"])[0]))
        else:
            out += media
            accepted += 1
    return "\r\n".join(out) + "\r\n" if accepted else None


# res_srtp's offer: every suite it knows, strongest-but-one first (as Asterisk 22 sends them).
OFFER_SUITES = ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80",
                "AEAD_AES_256_GCM", "AES_192_CM_HMAC_SHA1_80"]


def make_offer(kind):
    """An offer as Asterisk makes it to a phone (ulaw, alaw, g722 and telephone-event)."""
    proto = {"sdes": "RTP/SAVP", "dtls": "UDP/TLS/RTP/SAVPF"}.get(kind, "RTP/AVP")
    port = random.randrange(10000, 20000, 2)
    lines = sdp_session(random.randrange(10**8, 10**9)) + [
        "m=audio %d %s 0 8 9 101" % (port, proto)]
    if kind == "sdes":
        lines += ["a=crypto:%d %s inline:%s" % (i, suite, random_key(SRTP_KEY_BYTES[suite]))
                  for i, suite in enumerate(OFFER_SUITES, 1)]
    elif kind == "dtls":
        lines += dtls_lines("actpass", port, True)
    lines += ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:9 G722/8000",
              "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20",
              "a=maxptime:140", "a=sendrecv"]
    if kind == "dtls":
        lines.append("a=rtcp-mux")
    return "\r\n".join(lines) + "\r\n"


# ------------------------------------------------------------------------------ digest auth

def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


def digest_params(value):
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {k.lower(): v.strip('"') for k, v in
            re.findall(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)', rest)}


class Dialog:
    """One INVITE or SUBSCRIBE dialog, as UAS (phone called us) or UAC (control 'invite')."""

    def __init__(self, call_id, role, **kw):
        self.call_id, self.role = call_id, role
        self.state, self.code, self.reason = "calling" if role == "uac" else "trying", 0, ""
        self.local_tag = self.remote_tag = ""
        self.local_uri = self.remote_uri = self.remote_target = ""
        self.route_set, self.local_cseq, self.proto, self.conn = [], 0, "udp", None
        self.invite, self.acked, self.ack_bytes, self.user = None, None, None, ""
        self.media = {}           # session id/version, port and keys a re-INVITE keeps
        self.path = []            # the binding's Path (UAC dialogs): res_pjsip_path adds it
        self.__dict__.update(kw)

    def summary(self):
        return {k: getattr(self, k) for k in ("call_id", "role", "state", "code", "reason",
                                               "user", "remote_target", "route_set",
                                               "local_cseq", "proto")}


# ---------------------------------------------------------------------------------- the peer

class Peer:
    def __init__(self, args):
        self.args, self.realm = args, args.realm
        self.users = dict(u.split(":", 1) for u in args.users.split(",") if ":" in u)
        self.encryption = dict(e.split(":", 1) for e in args.encryption.split(",") if ":" in e)
        self.bindings = {}        # user -> {contact uri: binding dict}
        self.dialogs = {}         # call-id -> Dialog
        self.server_tx = {}       # (branch, method) -> {"last": bytes, "req": SipMessage}
        self.client_tx = {}       # branch -> {"future", "dialog", "request", "dest"}
        self.nonces = {}          # nonce -> issue time
        self.tcp_conns = {}       # (host, port) -> StreamWriter, accepted or opened
        self.udp = None
        self.udp_port = self.tcp_port = None
        self.fault_seen = set()   # (branch, method) of requests counted for --drop-every
        self.new_requests = self.finals = 0
        self.log_file = open(args.log, "a", buffering=1)

    # --------------------------------------------------------------------- logging, transport

    def log(self, direction, proto, peer, raw=None, **extra):
        entry = {"t": time.time(), "dir": direction, "proto": proto,
                 "peer": "%s:%s" % tuple(peer[:2]) if peer else None}
        if raw is not None:
            entry["raw"] = raw.decode("utf-8", "backslashreplace")
        entry.update(extra)
        self.log_file.write(json.dumps(entry) + "\n")

    def on_datagram(self, data, addr):
        if not data.strip():
            self.log("in", "udp", addr, data, keepalive=True)    # RFC 5626 ping, no answer
            return
        self.receive(data, "udp", addr, None)

    async def serve_tcp(self, reader, writer):
        """Read Content-Length framed messages off one connection (RFC 3261 18.3)."""
        peer = writer.get_extra_info("peername")[:2]
        self.tcp_conns[peer] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.strip():      # CRLFCRLF keepalive: pjsip answers CRLF (RFC 5626)
                    self.log("in", "tcp", peer, head, keepalive=True)
                    writer.write(b"\r\n")
                    continue
                m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                self.receive(head.lstrip(b"\r\n") + body, "tcp", peer, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.LimitOverrunError:
            self.log("in", "tcp", peer, error="header block over 64 KiB, connection closed")
        finally:
            if self.tcp_conns.get(peer) is writer:
                del self.tcp_conns[peer]
            writer.close()

    async def send(self, proto, dest, data, conn=None):
        """Send bytes to dest over proto; TCP reuses any open connection to dest (as pjsip)."""
        if proto == "udp":
            self.udp.sendto(data, dest)
        else:
            conn = conn if conn and not conn.is_closing() else self.tcp_conns.get(tuple(dest))
            if conn is None or conn.is_closing():
                reader, conn = await asyncio.open_connection(*dest)
                self.tcp_conns[tuple(dest)] = conn
                asyncio.ensure_future(self.serve_tcp(reader, conn))
            conn.write(data)
        self.log("out", proto, dest, data)

    def receive(self, data, proto, peer, conn):
        try:
            msg = parse_message(data)
        except (ValueError, IndexError) as exc:
            self.log("in", proto, peer, data, error=str(exc))
            return
        if self.drop_first_copy(msg, proto):
            self.log("dropped", proto, peer, data)
            return
        self.log("in", proto, peer, data)
        msg.proto, msg.peer, msg.conn = proto, peer, conn
        if not msg.get("via") and not msg.is_response:
            self.log("in", proto, peer, error="no Via, dropped")   # nowhere to answer
            return
        handler = self.on_response if msg.is_response else self.on_request
        asyncio.ensure_future(self.guard(handler(msg), proto, peer))

    def drop_first_copy(self, msg, proto):
        """--drop-every: the first copy of every Nth new UDP request is lost; copies pass."""
        every = self.args.drop_every
        if not every or proto != "udp" or msg.is_response or msg.method == "ACK":
            return False
        key = (msg.branch, msg.cseq[1])
        if key in self.fault_seen:
            return False
        if len(self.fault_seen) > 100000:
            self.fault_seen.clear()
        self.fault_seen.add(key)
        self.new_requests += 1
        return self.new_requests % every == 0

    async def guard(self, coro, proto, peer):
        """Run a handler; a bug or odd input must show in the log, never stop the peer."""
        try:
            await coro
        except Exception as exc:                                # noqa: BLE001 - keep running
            self.log("in", proto, peer, error="handler failed: %r" % exc)

    # ------------------------------------------------------------------------------ responses

    def response_bytes(self, req, code, headers=(), body="", to_tag=None, reason=None):
        vias = req.values("via")
        lines = ["SIP/2.0 %d %s" % (code, reason or REASONS.get(code, "Unknown"))]
        lines.append("Via: " + reprint_via(vias[0], req.peer[0], req.peer[1]))
        lines += ["Via: " + reprint_via(v) for v in vias[1:]]
        to = req.get("to")
        if code > 100 and "tag" not in header_params(to):
            to += ";tag=" + (to_tag or req.branch or uuid.uuid4().hex)
        lines += ["Call-ID: " + req.get("call-id"), "From: " + req.get("from"), "To: " + to,
                  "CSeq: " + req.get("cseq")]
        lines += ["%s: %s" % h for h in headers] + ["Server: " + AGENT]
        if body:
            lines.append("Content-Type: application/sdp")
        raw = "\r\n".join(lines + [content_length(body)]) + "\r\n\r\n" + body
        return raw.encode()

    def response_dest(self, req):
        """pjsip_get_response_addr for UDP: maddr, else received:rport, else received:sent-by."""
        params = header_params(req.get("via"))
        if "rport" in params and not params.get("maddr"):
            return req.peer[0], req.peer[1]
        sent_by = req.get("via").partition(" ")[2].split(";")[0].replace(" ", "")
        return params.get("maddr") or req.peer[0], uri_target("sip:" + sent_by)[1]

    async def respond(self, req, code, headers=(), body="", to_tag=None, reason=None):
        data = self.response_bytes(req, code, headers, body, to_tag, reason)
        if req.method != "ACK":
            self.remember_tx(req)["last"] = data
        if req.proto == "udp":
            await self.send("udp", self.response_dest(req), data)
            if code >= 200 and self.args.duplicate_every:
                self.finals += 1
                if self.finals % self.args.duplicate_every == 0:
                    await self.send("udp", self.response_dest(req), data)
        elif req.conn is not None and not req.conn.is_closing():
            await self.send("tcp", req.peer, data, req.conn)
        else:
            self.log("out", req.proto, req.peer, data, error="connection gone, not sent")
        return data

    def remember_tx(self, req):
        if len(self.server_tx) > 20000:                        # floods must not eat memory
            for key in list(self.server_tx)[:10000]:
                del self.server_tx[key]
        return self.server_tx.setdefault((req.branch, req.cseq[1]), {"last": None, "req": req})

    # ---------------------------------------------------------------------------- requests in

    async def on_request(self, req):
        missing = [h for h in ("from", "to", "call-id", "cseq") if not req.get(h)]
        if missing:
            await self.respond(req, 400, reason="Missing " + ", ".join(missing))
            return
        tx = self.server_tx.get((req.branch, req.cseq[1]))
        if tx is not None and req.method != "ACK":               # retransmission
            if tx["last"]:
                await self.send(req.proto, self.response_dest(req) if req.proto == "udp"
                                else req.peer, tx["last"], req.conn)
            return
        if req.get("max-forwards", "70").strip() == "0":
            await self.respond(req, 483)
            return
        if await self.challenged(req):
            return
        if req.method not in METHODS:
            await self.respond(req, 501)
        else:
            await getattr(self, "on_" + req.method.lower())(req)

    async def challenged(self, req):
        """--authenticate: pjsip_distributor's authenticate() runs before any method handler.

        Every out-of-dialog request but ACK and CANCEL (REGISTER has its own handler) from an
        endpoint with auth is challenged 401 until its Authorization is right; a From user that
        is no endpoint gets the artificial endpoint's 401, always. In-dialog requests pass."""
        if (not self.args.authenticate or req.method in ("REGISTER", "ACK", "CANCEL")
                or "tag" in header_params(req.get("to"))):
            return False
        caller = uri_user(addr_uri(req.get("from")))
        if self.users.get(caller) == "!":
            await self.respond(req, 403)
            return True
        verdict = self.check_auth(req, "authorization", caller)
        if verdict == "ok":
            return False
        await self.respond(req, 401, [("WWW-Authenticate",
                                       self.challenge(stale=verdict == "stale"))])
        return True

    def known_user(self, user):
        return user in SPECIAL_USERS or user in self.users or bool(self.bindings.get(user))

    def contact_for(self, req, user=None):
        """The Contact of Asterisk's answers in a dialog: the transport's address, no user part
        (ast_sip_create_dialog_uas_locked; endpoint contact_user is unset)."""
        port = self.udp_port if req.proto == "udp" else self.tcp_port
        return "<sip:127.0.0.1:%d%s>" % (port, ";transport=TCP" if req.proto == "tcp" else "")

    async def on_options(self, req):
        user = uri_user(req.uri)
        if user and not self.known_user(user):
            await self.respond(req, 404)
            return
        await self.respond(req, 200, [("Accept", "application/sdp"), ("Allow", ALLOW),
                                      ("Supported", SUPPORTED), ("Accept-Encoding", "identity"),
                                      ("Accept-Language", "en")])

    async def on_message(self, req):
        await self.respond(req, 202 if self.known_user(uri_user(req.uri)) else 404)

    async def on_info(self, req):
        await self.respond(req, 200)

    on_prack = on_notify = on_info

    async def on_update(self, req):
        dlg = self.dialogs.get(req.get("call-id"))
        body = answer_sdp(req.body.decode("utf-8", "replace"), state=dlg.media if dlg else None) \
            if req.body else ""
        await self.respond(req, 200 if body is not None else 488, body=body or "")

    # ----------------------------------------------------------------------------- REGISTER

    def challenge(self, stale=False):
        nonce = "%d/%s" % (time.time(), secrets.token_hex(16))
        self.nonces[nonce] = time.time()
        return ('Digest realm="%s",nonce="%s",opaque="%s",algorithm=MD5,qop="auth"%s'
                % (self.realm, nonce, secrets.token_hex(8), ",stale=true" if stale else ""))

    def check_auth(self, req, header, user):
        """-> 'ok', 'stale' or 'bad' for the credentials in header (Authorization or Proxy-)."""
        for value in req.values(header):
            p = digest_params(value)
            if p.get("realm") != self.realm:
                continue
            password = self.users.get(p.get("username", ""))
            if p.get("username") != user or password in (None, "!"):
                return "bad"
            issued = self.nonces.get(p.get("nonce"))
            if issued is None:
                return "bad"
            ha1 = md5("%s:%s:%s" % (user, self.realm, password))
            ha2 = md5("%s:%s" % (req.method, p.get("uri", "")))
            if p.get("qop"):
                want = md5(":".join([ha1, p["nonce"], p.get("nc", ""), p.get("cnonce", ""),
                                     p["qop"], ha2]))
            else:
                want = md5("%s:%s:%s" % (ha1, p["nonce"], ha2))
            if want != p.get("response", "").lower():
                return "bad"
            return "stale" if time.time() - issued > NONCE_LIFETIME else "ok"
        return "bad"

    async def on_register(self, req):
        user = uri_user(addr_uri(req.get("to")))
        if self.users.get(user) == "!":
            await self.respond(req, 403)
            return
        verdict = "ok" if self.args.open_register else self.check_auth(req, "authorization", user)
        if verdict != "ok":
            await self.respond(req, 401, [("WWW-Authenticate",
                                           self.challenge(stale=verdict == "stale"))])
            return
        error = self.update_bindings(req, user)
        if error:
            await self.respond(req, *error)
            return
        now, headers = time.time(), [("Date", email.utils.formatdate(usegmt=True))]
        for uri, b in self.bindings.get(user, {}).items():
            headers.append(("Contact", "<%s>;expires=%d" % (uri, max(0, b["expires_at"] - now))))
        headers += [("Expires", req.get("expires") or str(DEFAULT_EXPIRES))]
        # res_pjsip_path: Supported: path whenever the AOR has support_path, then the Path.
        headers.append(("Supported", "path"))
        headers += [("Path", p) for p in req.values("path")]
        await self.respond(req, 200, headers)

    def update_bindings(self, req, user):
        """Apply the REGISTER's contacts; returns (code, headers) on error, None on success."""
        store = self.bindings.setdefault(user, {})
        for uri in [u for u, b in store.items() if b["expires_at"] <= time.time()]:
            del store[uri]
        contacts = req.values("contact")
        header_exp = req.get("expires")
        if contacts == ["*"]:
            if header_exp.strip() != "0":
                return 400, ()
            store.clear()
            return None
        for contact in contacts:
            exp = header_params(contact).get("expires", header_exp or str(DEFAULT_EXPIRES))
            exp = int(exp) if exp.strip().isdigit() else DEFAULT_EXPIRES
            if 0 < exp < MIN_EXPIRES:
                return 423, [("Min-Expires", str(MIN_EXPIRES))]
        for contact in contacts:
            uri = addr_uri(contact)
            exp = header_params(contact).get("expires", header_exp or str(DEFAULT_EXPIRES))
            exp = min(int(exp) if exp.strip().isdigit() else DEFAULT_EXPIRES, MAX_EXPIRES)
            if exp == 0:
                store.pop(uri, None)
            else:
                store[uri] = {"uri": uri, "expires_at": time.time() + exp,
                              "path": req.values("path"), "call_id": req.get("call-id"),
                              "source": "%s:%s:%s" % (req.proto, *req.peer),
                              "user_agent": req.get("user-agent")}
        return None

    # ------------------------------------------------------------------------------- INVITE

    async def on_invite(self, req):
        if "tag" in header_params(req.get("to")):
            await self.on_reinvite(req)
            return
        user, caller = uri_user(req.uri), uri_user(addr_uri(req.get("from")))
        dlg = Dialog(req.get("call-id"), "uas", user=user, invite=req, proto=req.proto,
                     conn=req.conn, local_tag=str(uuid.uuid4()),
                     remote_tag=header_params(req.get("from")).get("tag", ""),
                     remote_uri=req.get("from"), local_uri=req.get("to"),
                     remote_target=addr_uri(req.get("contact")),
                     route_set=req.values("record-route"), acked=asyncio.Event(),
                     local_cseq=random.randrange(1, 65536), caller=caller)
        self.dialogs[dlg.call_id] = dlg
        await self.respond(req, 100)
        if not self.known_user(user):
            await self.finish(dlg, 404)
            return
        if user == "busy":
            await self.finish(dlg, 486)
            return
        offer = req.body.decode("utf-8", "replace")
        answer = (answer_sdp(offer, user == "plain", dlg.media, self.encryption.get(caller))
                  if offer else make_offer("plain"))
        if answer is None:
            await self.finish(dlg, 488)
            return
        await asyncio.sleep(self.args.ring_delay)
        if dlg.state != "trying":                               # CANCEL won the race
            return
        if user == "early":
            dlg.state = "early"
            await self.respond(req, 183, self.dialog_headers(dlg, req), answer, dlg.local_tag)
        else:
            dlg.state = "ringing"
            await self.respond(req, 180, self.dialog_headers(dlg, req), "", dlg.local_tag)
        if user == "slow":
            return                                              # on_cancel finishes it
        await asyncio.sleep(self.args.ring_delay)
        if dlg.state in ("ringing", "early"):
            await self.answer(dlg, req, answer)

    def dialog_headers(self, dlg, req):
        """Record-Route copied into dialog-creating responses (RFC 3261 12.1.1) + Contact."""
        return ([("Record-Route", rr) for rr in dlg.route_set] +
                [("Contact", self.contact_for(req, dlg.user)), ("Allow", ALLOW),
                 ("Supported", SUPPORTED)])

    async def answer(self, dlg, req, sdp):
        dlg.state, dlg.code, dlg.reason = "answered", 200, "OK"
        data = await self.respond(req, 200, self.dialog_headers(dlg, req), sdp, dlg.local_tag)
        if req.proto == "udp":
            asyncio.ensure_future(self.retransmit_2xx(dlg, data, self.response_dest(req)))

    async def retransmit_2xx(self, dlg, data, dest):
        """UAS core keeps sending the 2xx until the ACK (RFC 3261 13.3.1.4), 64*T1 at most."""
        interval, deadline = T1, time.time() + 64 * T1
        while time.time() < deadline:
            try:
                await asyncio.wait_for(dlg.acked.wait(), interval)
                return
            except asyncio.TimeoutError:
                if dlg.state != "answered":
                    return
                await self.send("udp", dest, data)
                interval = min(interval * 2, T2)
        dlg.state, dlg.reason = "terminated", "no ACK"

    async def finish(self, dlg, code):
        dlg.state, dlg.code = ("cancelled" if code == 487 else "failed"), code
        dlg.reason = REASONS.get(code, "")
        await self.respond(dlg.invite, code, to_tag=dlg.local_tag)

    async def on_reinvite(self, req):
        dlg = self.dialogs.get(req.get("call-id"))
        if dlg is None:
            await self.respond(req, 481)
            return
        answer = answer_sdp(req.body.decode("utf-8", "replace"), dlg.user == "plain", dlg.media,
                            self.encryption.get(getattr(dlg, "caller", ""))) \
            if req.body else make_offer("plain")
        if answer is None:
            await self.respond(req, 488)
        else:
            await self.respond(req, 200, [("Allow", ALLOW), ("Supported", SUPPORTED),
                                          ("Contact", self.contact_for(req))], answer)

    async def on_cancel(self, req):
        tx = self.server_tx.get((req.branch, "INVITE"))
        dlg = self.dialogs.get(req.get("call-id"))
        if tx is None or dlg is None or dlg.role != "uas" or dlg.state not in (
                "trying", "ringing", "early"):
            await self.respond(req, 481)
            return
        await self.respond(req, 200, to_tag=dlg.local_tag)
        await self.finish(dlg, 487)

    async def on_ack(self, req):
        dlg = self.dialogs.get(req.get("call-id"))
        if dlg is not None and dlg.state == "answered" and dlg.role == "uas":
            dlg.state = "confirmed"
            dlg.acked.set()
        # ACKs for 401/4xx/5xx (same branch as the INVITE) need nothing more: absorbed.

    async def on_bye(self, req):
        dlg = self.dialogs.get(req.get("call-id"))
        if dlg is None or dlg.state in ("terminated", "failed", "cancelled"):
            await self.respond(req, 481)
            return
        dlg.state, dlg.reason = "terminated", "BYE from phone"
        if dlg.acked:
            dlg.acked.set()
        await self.respond(req, 200)

    # ---------------------------------------------------------------------------- SUBSCRIBE

    async def on_subscribe(self, req):
        if req.get("event").split(";")[0].strip().lower() != "message-summary":
            await self.respond(req, 489, [("Allow-Events", "message-summary")])
            return
        if not self.known_user(uri_user(req.uri)):
            await self.respond(req, 404)
            return
        call_id = req.get("call-id")
        dlg = self.dialogs.get(call_id) or Dialog(
            call_id, "uas", user=uri_user(req.uri), proto=req.proto, conn=req.conn,
            local_tag=header_params(req.get("to")).get("tag") or str(uuid.uuid4()),
            remote_uri=req.get("from"), local_uri=req.get("to"),
            route_set=req.values("record-route"), state="subscribed")
        dlg.remote_target = addr_uri(req.get("contact")) or dlg.remote_target
        self.dialogs[call_id] = dlg
        exp = req.get("expires", str(DEFAULT_EXPIRES)).strip()
        exp = min(int(exp) if exp.isdigit() else DEFAULT_EXPIRES, MAX_EXPIRES)
        await self.respond(req, 200, [("Contact", self.contact_for(req, dlg.user)),
                                      ("Expires", str(exp))], to_tag=dlg.local_tag)
        state = "active;expires=%d" % exp if exp else "terminated;reason=timeout"
        dlg.state = "subscribed" if exp else "terminated"
        await self.request_in_dialog(dlg, "NOTIFY", self.mwi_headers(state), self.mwi_body(dlg),
                                     content_type=MWI_TYPE)

    def mwi_headers(self, state):
        return [("Event", "message-summary"), ("Subscription-State", state)]

    def mwi_body(self, dlg_or_user):
        user = getattr(dlg_or_user, "user", dlg_or_user)
        return ("Messages-Waiting: yes\r\nMessage-Account: sip:%s@127.0.0.1\r\n"
                "Voice-Message: 1/0 (0/0)\r\n" % user)

    # ------------------------------------------------------------------- requests we originate

    def next_hop(self, ruri, routes):
        """Loose routing: first Route URI, else the request-URI (RFC 3261 8.1.2, 16.12)."""
        host, port, transport = uri_target(addr_uri(routes[0]) if routes else ruri)
        if transport not in ("udp", "tcp"):
            raise ValueError("cannot reach %s over %s from loopback" % (host, transport))
        return transport, (host, port)

    def build_request(self, method, ruri, proto, headers, body="", branch=None,
                      content_type="application/sdp"):
        """pjsip's order: Via, the given headers (Route among them where the caller put it),
        Max-Forwards, User-Agent, then Content-Type and Content-Length."""
        port = self.udp_port if proto == "udp" else self.tcp_port
        branch = branch or "z9hG4bKPj" + str(uuid.uuid4())
        lines = ["%s %s SIP/2.0" % (method, ruri),
                 "Via: SIP/2.0/%s 127.0.0.1:%d;rport;branch=%s" % (proto.upper(), port, branch)]
        lines += ["%s: %s" % h for h in headers]
        lines += ["Max-Forwards: 70", "User-Agent: " + AGENT]
        if body:
            lines.append("Content-Type: " + content_type)
        raw = "\r\n".join(lines + [content_length(body)]) + "\r\n\r\n" + body
        return branch, raw.encode()

    async def send_request(self, method, ruri, routes, headers, body="", dialog=None,
                           timeout=10.0, content_type="application/sdp"):
        """Send a request and wait for its final response (None on timeout).

        routes: the Route URIs in order, which pick the next hop; headers carry their Route
        lines themselves (pjsip puts the route set after CSeq and the Path route last)."""
        proto, dest = self.next_hop(ruri, routes)
        branch, data = self.build_request(method, ruri, proto, headers, body,
                                          content_type=content_type)
        fut = asyncio.get_running_loop().create_future()
        self.client_tx[branch] = {"future": fut, "dialog": dialog, "method": method,
                                  "ruri": ruri, "routes": routes, "proto": proto, "dest": dest,
                                  "headers": headers}
        await self.send(proto, dest, data)
        interval, deadline = T1, time.time() + timeout
        while not fut.done() and time.time() < deadline:       # Timers A/E over UDP
            await asyncio.wait([fut], timeout=min(interval, max(0.01, deadline - time.time())))
            tx = self.client_tx[branch]
            if not fut.done() and proto == "udp" and not tx.get("provisional"):
                await self.send(proto, dest, data)
            interval = min(interval * 2, T2)
        return fut.result() if fut.done() else None

    async def on_response(self, resp):
        tx = self.client_tx.get(resp.branch)
        if tx is None:
            return                                              # stray response: logged only
        if resp.code >= 200 and not tx["future"].done():
            tx["future"].set_result(resp)
        elif resp.code < 200:
            tx["provisional"] = True
        if resp.cseq[1] == "INVITE" and tx["dialog"] is not None:
            await self.uac_invite_response(tx, tx["dialog"], resp)

    async def uac_invite_response(self, tx, dlg, resp):
        if resp.code < 200:
            if resp.code > 100 and dlg.state == "calling":
                dlg.state = "early" if "tag" in header_params(resp.get("to")) else "proceeding"
            return
        dlg.code, dlg.reason = resp.code, resp.reason
        dlg.remote_uri = resp.get("to")
        dlg.remote_tag = header_params(dlg.remote_uri).get("tag", "")
        if resp.code >= 300:                                    # hop-by-hop ACK, same branch
            dlg.state = "failed"
            headers = [("From", dlg.local_uri), ("To", resp.get("to")),
                       ("Call-ID", dlg.call_id), ("CSeq", "%d ACK" % resp.cseq[0])]
            headers += [("Route", r) for r in tx["routes"]]
            _, data = self.build_request("ACK", tx["ruri"], tx["proto"], headers,
                                         branch=resp.branch)
            await self.send(tx["proto"], tx["dest"], data)
            return
        if dlg.ack_bytes is None:                               # first 2xx: set up the dialog
            dlg.remote_target = addr_uri(resp.get("contact")) or tx["ruri"]
            dlg.route_set = list(reversed(resp.values("record-route")))
            dlg.state = "confirmed"
            proto, dest = self.next_hop(dlg.remote_target, dlg.route_set)
            headers = [("From", dlg.local_uri), ("To", dlg.remote_uri),
                       ("Call-ID", dlg.call_id), ("CSeq", "%d ACK" % resp.cseq[0])]
            headers += [("Route", r) for r in dlg.route_set]
            _, data = self.build_request("ACK", dlg.remote_target, proto, headers)
            dlg.ack_bytes = (proto, dest, data)
        await self.send(*dlg.ack_bytes)                         # again for each 2xx retransmit

    async def request_in_dialog(self, dlg, method, extra, body="", timeout=10.0,
                                content_type="application/sdp"):
        """In-dialog request: route set after CSeq; a BYE carries Reason (res_pjsip_rfc3326);
        requests of a call Asterisk placed also get Supported: path and the binding's Path
        as a last Route (res_pjsip_path's session supplement; a phone's own call gets only the
        Supported: path, as seen on Asterisk 22.10.1)."""
        dlg.local_cseq += 1
        from_, to = ((dlg.local_uri, dlg.remote_uri) if dlg.role == "uac" else
                     (self.with_tag(dlg.local_uri, dlg.local_tag), dlg.remote_uri))
        headers = [("From", from_), ("To", to), ("Call-ID", dlg.call_id),
                   ("CSeq", "%d %s" % (dlg.local_cseq, method))]
        headers += [("Route", r) for r in dlg.route_set] + list(extra)
        routes = list(dlg.route_set)
        if dlg.invite is not None or dlg.role == "uac":          # a call, not a subscription
            headers.append(("Supported", "path"))
            headers += [("Route", p) for p in dlg.path]
            routes += dlg.path
        return await self.send_request(method, dlg.remote_target, routes, headers, body,
                                       timeout=timeout, content_type=content_type)

    @staticmethod
    def with_tag(addr, tag):
        return addr if "tag" in header_params(addr) else addr + ";tag=" + tag

    def contact_self(self, proto, user="asterisk"):
        """Contact of requests Asterisk sends: default_from_user (or the endpoint for
        out-of-dialog requests) at the transport's address."""
        port = self.udp_port if proto == "udp" else self.tcp_port
        return "<sip:%s@127.0.0.1:%d%s>" % (user, port, ";transport=TCP" if proto == "tcp"
                                            else "")

    def out_of_dialog(self, method, binding, user, proto):
        """ast_sip_create_request for a contact (qualify OPTIONS, unsolicited NOTIFY): From is
        the endpoint at our address, To the contact without port or parameters, our Contact,
        a random CSeq, Supported: path, then the Path as Route."""
        return ([("From", "<sip:%s@127.0.0.1>;tag=%s" % (user, uuid.uuid4())),
                 ("To", fromto_uri(binding["uri"])),
                 ("Contact", self.contact_self(proto, user)), ("Call-ID", str(uuid.uuid4())),
                 ("CSeq", "%d %s" % (random.randrange(1, 65536), method))],
                [("Supported", "path")] + [("Route", p) for p in binding["path"]])

    async def invite_binding(self, binding, user, sdp, caller, timeout):
        dlg = Dialog(str(uuid.uuid4()), "uac", user=user, local_tag=str(uuid.uuid4()),
                     path=list(binding["path"]))
        # No caller ID (CLI/AMI originate without one): chan_pjsip's anonymous From.
        dlg.local_uri = ('"%s" <sip:%s@127.0.0.1>;tag=%s' % (caller, caller, dlg.local_tag)
                         if caller else
                         '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=' + dlg.local_tag)
        dlg.remote_uri = fromto_uri(binding["uri"])
        self.dialogs[dlg.call_id] = dlg
        proto, _ = self.next_hop(binding["uri"], binding["path"])
        dlg.local_cseq = random.randrange(1, 65536)
        headers = [("From", dlg.local_uri), ("To", dlg.remote_uri),
                   ("Contact", self.contact_self(proto)), ("Call-ID", dlg.call_id),
                   ("CSeq", "%d INVITE" % dlg.local_cseq), ("Allow", ALLOW),
                   ("Supported", SUPPORTED_OUT), ("Session-Expires", str(SESSION_EXPIRES)),
                   ("Min-SE", str(MIN_SE))]
        headers += [("Route", p) for p in binding["path"]]
        resp = await self.send_request("INVITE", binding["uri"], binding["path"], headers,
                                       make_offer(sdp), dialog=dlg, timeout=timeout)
        if resp is None:
            dlg.state, dlg.code, dlg.reason = "failed", 408, "no final response"
        return {"contact": binding["uri"], "call_id": dlg.call_id, "code": dlg.code,
                "reason": dlg.reason, "state": dlg.state}

    # ------------------------------------------------------------------------- control port

    def current_bindings(self, user):
        now = time.time()
        return [b for b in self.bindings.get(user, {}).values() if b["expires_at"] > now]

    async def control(self, req):
        cmd, timeout = req.get("cmd"), float(req.get("timeout", 10))
        if cmd == "invite":
            found = self.current_bindings(req["user"])
            if not found:
                return {"ok": False, "error": "no binding for %s" % req["user"]}
            calls = await asyncio.gather(*(self.invite_binding(
                b, req["user"], req.get("sdp", "sdes"), req.get("from"), timeout)
                for b in found))
            return {"ok": True, "code": calls[0]["code"], "call_id": calls[0]["call_id"],
                    "calls": calls}
        if cmd == "notify":
            codes = []
            for b in self.current_bindings(req["user"]):
                proto, _ = self.next_hop(b["uri"], b["path"])
                head, tail = self.out_of_dialog("NOTIFY", b, req["user"], proto)
                headers = head + self.mwi_headers("active") + tail
                resp = await self.send_request("NOTIFY", b["uri"], b["path"], headers,
                                               self.mwi_body(req["user"]), timeout=timeout,
                                               content_type=MWI_TYPE)
                codes.append(resp.code if resp else 408)
            return {"ok": bool(codes), "codes": codes, "code": codes[0] if codes else None}
        if cmd == "options":              # qualify: OPTIONS to every binding, as pjsip_options.c
            answers = []
            for b in self.current_bindings(req["user"]):
                proto, _ = self.next_hop(b["uri"], b["path"])
                head, tail = self.out_of_dialog("OPTIONS", b, req["user"], proto)
                resp = await self.send_request("OPTIONS", b["uri"], b["path"], head + tail,
                                               timeout=timeout)
                answers.append({"code": resp.code if resp else 408,
                                "body": resp.body.decode("utf-8", "replace") if resp else "",
                                "content_type": resp.get("content-type") if resp else ""})
            return {"ok": bool(answers), "answers": answers,
                    "code": answers[0]["code"] if answers else None}
        if cmd == "bye":
            dlg = self.dialogs.get(req.get("call_id"))
            if dlg is None:
                return {"ok": False, "error": "no such dialog"}
            reason = [("Reason", "Q.850;cause=%d" % int(req.get("cause", 0)))]
            resp = await self.request_in_dialog(dlg, "BYE", reason, timeout=timeout)
            dlg.state, dlg.reason = "terminated", "BYE from peer"
            return {"ok": resp is not None, "code": resp.code if resp else 408}
        if cmd == "calls":
            return {"ok": True, "calls": [d.summary() for d in self.dialogs.values()]}
        if cmd == "bindings":
            return {"ok": True, "bindings": {u: self.current_bindings(u) for u in self.bindings}}
        if cmd == "wait":
            deadline = time.time() + float(req.get("timeout", 5))
            while time.time() < deadline:
                dlg = self.dialogs.get(req.get("call_id"))
                if dlg is not None and dlg.state == req.get("state"):
                    return {"ok": True, "state": dlg.state}
                await asyncio.sleep(0.05)
            dlg = self.dialogs.get(req.get("call_id"))
            return {"ok": False, "state": dlg.state if dlg else None}
        return {"ok": False, "error": "unknown cmd %r" % cmd}

    async def serve_control(self, reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                answer = await self.control(json.loads(line))
            except Exception as exc:                            # noqa: BLE001 - report it
                answer = {"ok": False, "error": repr(exc)}
            writer.write((json.dumps(answer) + "\n").encode())
            await writer.drain()
        writer.close()


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer):
        self.peer = peer

    def datagram_received(self, data, addr):
        self.peer.on_datagram(data, addr)

    def error_received(self, exc):        # ICMP port unreachable etc.: note it and go on
        self.peer.log("out", "udp", None, error=repr(exc))


def hostport(text):
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--udp", required=True)
    ap.add_argument("--tcp")
    ap.add_argument("--control")
    ap.add_argument("--log", required=True)
    ap.add_argument("--users", default="")
    ap.add_argument("--realm", default="asterisk")
    ap.add_argument("--authenticate", "--auth-invite", dest="authenticate", action="store_true",
                    help="challenge every out-of-dialog request but ACK/CANCEL with 401, as "
                         "pjsip does for an endpoint with auth (REGISTER always is)")
    ap.add_argument("--encryption", default="",
                    help="USER:sdes|dtls|no,...: the endpoint's one media_encryption; other "
                         "offers from USER get 488 (default: any SRTP offer is answered)")
    ap.add_argument("--ring-delay", type=float, default=0.2,
                    help="seconds between 100 and 180/183 and between those and 200")
    ap.add_argument("--open-register", action="store_true",
                    help="accept REGISTER without credentials (an endpoint without auth)")
    ap.add_argument("--drop-every", type=int, default=0,
                    help="drop the first copy of every Nth new UDP request (not ACK)")
    ap.add_argument("--duplicate-every", type=int, default=0,
                    help="send every Nth final UDP response twice")
    args = ap.parse_args()
    peer = Peer(args)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(peer),
                                                       local_addr=hostport(args.udp))
    peer.udp, peer.udp_port = transport, transport.get_extra_info("sockname")[1]
    # Floods (sipsak -F) outrun the default 208 KiB buffer; ask for 4 MiB (rmem_max caps it).
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    ports = {"udp": peer.udp_port, "tcp": None, "control": None}
    if args.tcp:
        server = await asyncio.start_server(peer.serve_tcp, *hostport(args.tcp))
        peer.tcp_port = ports["tcp"] = server.sockets[0].getsockname()[1]
    if args.control:
        server = await asyncio.start_server(peer.serve_control, *hostport(args.control))
        ports["control"] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
