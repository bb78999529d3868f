#!/usr/bin/env python3
"""A stand-in for Asterisk's manager interface (AMI) for the tests, standard library only.

    ami_peer.py --port 0 --version 11.0.0 --user NAME:SECRET[:READ[:WRITE]]... [--authtimeout 30]
                [--authlimit 50] [--writetimeout 100] [--fail-delay 1] [--control-port 0]
                [--asterisk-version X] [--systemname NAME] [--timestampevents] [--log FILE]
                [--runuser NAME] [--pjsip-auth ID:USERNAME:PASSWORD]...

READ and WRITE are manager.conf class lists (`system,call`, `all`, `none`…), default `all`.
Prints exactly one line `READY port=<ami port> control=<control port>` once both listen.

What it reproduces byte for byte from main/manager.c: the banner,
get_input framing (CRLF or bare LF, 1024-byte line buffer with its "line too long" discard, NUL
truncation, pipelining), the 128-header limit, header lookup (case-insensitive name, colon right
after it, leading blanks skipped, first match wins), the order of checks in process_message and
their texts, Login/Challenge/MD5/Logoff, the one-second delay and close after a failed login,
authtimeout/authlimit, response layout (Response, ActionID, EventList, Message), list actions
(EventList start / items / Complete + ListItems), event layout and delivery (Privilege line, read
classes and event mask, all bits of the category required), FullyBooted after login, the
100 ms write timeout that disconnects a reader that stops reading, and events held back while
the session runs an action (they follow its response). Compared with a real Asterisk 22.10.1
(tests/peers/README.md lists what differed): the security events manager.c reports
(SuccessfulAuth, InvalidPassword, InvalidAccountID, ChallengeResponseFailed,
RequestNotAllowed, RequestBadFormat), Local channels as ;1/;2 pairs with their Newchannel,
Newstate and Hangup events, and main/cli.c's and res_pjsip's CLI layouts.

Control port: newline-delimited JSON, one JSON line answer per request:
  {"cmd":"event","name":"Newchannel","class":"call","fields":{"Channel":"PJSIP/1"},"count":1}
  {"cmd":"blast","name":"Newexten","class":"dialplan","count":100000,"fields":{...}}
      (optional "rate": events per second to pace at; default as fast as possible;
       optional "seconds": emit for that long instead of "count" events, answering the count)
  {"cmd":"actions"} {"cmd":"clear"} {"cmd":"sessions"} {"cmd":"drop"} {"cmd":"ping"}
  {"cmd":"channels"} {"cmd":"channels","channels":[{"Channel":"PJSIP/100-00000001",...}]}
"""
import argparse
import asyncio
import hashlib
import json
import random
import re
import sys
import time

INT_MAX = 2**31 - 1
SYSTEM, CALL, LOG, VERBOSE, COMMAND, AGENT, USER, CONFIG = (1 << i for i in range(8))
DTMF, REPORTING, CDR, DIALPLAN, ORIGINATE, AGI = (1 << i for i in range(8, 14))
CC, AOC, TEST, SECURITY, MESSAGE = 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 30

# manager.c perms[], in order ("none" last: authority_to_str stops before it).
PERMS = [
    (SYSTEM, "system"), (CALL, "call"), (LOG, "log"), (VERBOSE, "verbose"),
    (COMMAND, "command"), (AGENT, "agent"), (USER, "user"), (CONFIG, "config"),
    (DTMF, "dtmf"), (REPORTING, "reporting"), (CDR, "cdr"), (DIALPLAN, "dialplan"),
    (ORIGINATE, "originate"), (AGI, "agi"), (CC, "cc"), (AOC, "aoc"), (TEST, "test"),
    (SECURITY, "security"), (MESSAGE, "message"), (INT_MAX, "all"), (0, "none"),
]

MAXLEN = 1024          # sizeof(inbuf) - 1
MAX_HEADERS = 128      # AST_MAX_MANHEADERS
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def lower(s):
    """strcasecmp's view of a string (C locale: ASCII letters only)."""
    return s.translate(_ASCII_LOWER)


def skip_blanks(s):
    """ast_skip_blanks: skip every byte below 33."""
    i = 0
    while i < len(s) and ord(s[i]) < 33:
        i += 1
    return s[i:]


def ast_instring(big, small):
    """manager.c ast_instring(big, small, ','), quirks included."""
    val = big
    while True:
        nxt = val.find(",")
        if nxt >= 0:
            if val[:nxt] == small[:nxt]:   # strncmp(val, small, nxt)
                return True
            val = val[nxt + 1:]
            if not val:
                return False
        else:
            return small == val


def get_perm(s):
    ret = 0
    if s is None:
        return 0
    for num, label in PERMS:
        if ast_instring(s, label):
            ret |= num
    return ret


def ast_true(s):
    return lower(s) in ("yes", "true", "y", "t", "1", "on") if s else False


def ast_false(s):
    return lower(s) in ("no", "false", "n", "f", "0", "off") if s else False


def strings_to_mask(s):
    if not s:
        return -1
    if s.isdigit() and s.isascii():
        return ((int(s) + 2**31) % 2**32) - 2**31       # atoi into a C int
    if ast_false(s):
        return 0
    if ast_true(s):
        ret = 0
        for num, _ in PERMS:
            ret |= num
        return ret
    return get_perm(s)


def authority_to_str(cat):
    labels = [label for num, label in PERMS[:-1] if cat & num]
    return ",".join(labels) if labels else "<none>"


def from_json_str(s):
    """Strings from JSON are carried as UTF-8 bytes (the internal form is latin-1 text = raw bytes)."""
    return str(s).encode("utf-8").decode("latin-1")


def to_json_str(s):
    return s.encode("latin-1").decode("utf-8", "replace")


def header_pairs(lines):
    out = []
    for h in lines:
        name, sep, value = h.partition(":")
        out.append([to_json_str(name), to_json_str(skip_blanks(value)) if sep else None])
    return out


def get_header(lines, name, skip_empty=False):
    """__astman_get_header: first match (optionally first non-empty); '' when absent."""
    ln = len(name)
    lname = lower(name)
    for h in lines:
        if len(h) > ln and lower(h[:ln]) == lname and h[ln] == ":":
            value = skip_blanks(h[ln + 1:])
            if skip_empty and not value:
                continue
            return value
    return ""


def c_atoi_prefix(s):
    """sscanf("%30d"): leading blanks, optional sign, digits; None if no number."""
    m = re.match(r"\s*([+-]?\d+)", s)
    return int(m.group(1)) if m else None


class Channel:
    STATES = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}

    def __init__(self, d):
        self.name = from_json_str(d.get("Channel", "PJSIP/100-00000001"))
        self.state = int(d.get("ChannelState", 6))
        self.f = {k: from_json_str(v) for k, v in d.items()}
        self.created = time.time() - float(d.get("Seconds", 0))
        self.vars = {}

    def get(self, key, default=""):
        return self.f.get(key, default)

    def state_block(self):
        tech = self.name.split("/", 1)[0]
        return (
            f"Channel: {self.name}\r\n"
            f"ChannelState: {self.state}\r\n"
            f"ChannelStateDesc: {self.STATES.get(self.state, 'Unknown')}\r\n"
            f"CallerIDNum: {self.get('CallerIDNum', '<unknown>')}\r\n"
            f"CallerIDName: {self.get('CallerIDName', '<unknown>')}\r\n"
            f"ConnectedLineNum: {self.get('ConnectedLineNum', '<unknown>')}\r\n"
            f"ConnectedLineName: {self.get('ConnectedLineName', '<unknown>')}\r\n"
            f"Language: {self.get('Language', 'en')}\r\n"
            f"AccountCode: {self.get('AccountCode')}\r\n"
            f"Context: {self.get('Context', 'from-internal')}\r\n"
            f"Exten: {self.get('Exten', 's')}\r\n"
            f"Priority: {self.get('Priority', '1')}\r\n"
            f"Uniqueid: {self.get('Uniqueid', '1700000000.1')}\r\n"
            f"Linkedid: {self.get('Linkedid', self.get('Uniqueid', '1700000000.1'))}\r\n"
        ), tech

    def duration(self):
        d = int(time.time() - self.created)
        return f"{d // 3600:02d}:{(d % 3600) // 60:02d}:{d % 60:02d}"


DEFAULT_CHANNELS = [
    {"Channel": "PJSIP/100-00000001", "ChannelState": 6, "CallerIDNum": "100",
     "CallerIDName": "Alice", "ConnectedLineNum": "200", "ConnectedLineName": "Bob",
     "Context": "from-internal", "Exten": "200", "Priority": "1",
     "Uniqueid": "1700000000.1", "Linkedid": "1700000000.1",
     "Application": "Dial", "ApplicationData": "PJSIP/200,30",
     "BridgeId": "7b0e1b58-0000-4000-8000-000000000001"},
    {"Channel": "PJSIP/200-00000002", "ChannelState": 6, "CallerIDNum": "200",
     "CallerIDName": "Bob", "ConnectedLineNum": "100", "ConnectedLineName": "Alice",
     "Context": "from-internal", "Exten": "s", "Priority": "1",
     "Uniqueid": "1700000000.2", "Linkedid": "1700000000.1",
     "Application": "AppDial", "ApplicationData": "(Outgoing Line)",
     "BridgeId": "7b0e1b58-0000-4000-8000-000000000001"},
]

DEFAULT_CONFIGS = {
    "pjsip.conf": [
        ("transport-udp", [("type", "transport"), ("protocol", "udp"), ("bind", "0.0.0.0")]),
        ("100", [("type", "endpoint"), ("context", "from-internal"), ("auth", "100"), ("aors", "100")]),
        ("200", [("type", "endpoint"), ("context", "from-internal"), ("auth", "200"), ("aors", "200")]),
    ],
    "extensions.conf": [
        ("general", [("static", "yes"), ("writeprotect", "no")]),
        ("from-internal", [("exten", "_1XX,1,Dial(PJSIP/${EXTEN},30)")]),
    ],
    "queues.conf": [("support", [("strategy", "ringall")]), ("sales", [("strategy", "rrmemory")])],
}

MODULES = {"res_pjsip.so", "chan_pjsip.so", "app_queue.so", "app_dial.so", "pbx_config.so",
           "res_musiconhold.so", "cdr_csv.so", "app_voicemail.so"}

ASTERISK_FOR_AMI = {"7": "18.21.0", "8": "19.8.1", "9": "20.7.0", "10": "21.2.0", "11": "22.10.1"}

SYNOPSIS = {
    "Ping": "Keepalive command.", "Events": "Control Event Flow.", "Logoff": "Logoff Manager.",
    "Login": "Login Manager.", "Challenge": "Generate Challenge for MD5 Auth.",
    "Hangup": "Hangup channel.", "Status": "List channel status.",
    "Setvar": "Sets a channel variable or function value.",
    "Getvar": "Gets a channel variable or function value.",
    "GetConfig": "Retrieve configuration.", "UpdateConfig": "Update basic configuration.",
    "ListCategories": "List categories in configuration file.",
    "Redirect": "Redirect (transfer) a call.", "Originate": "Originate a call.",
    "Command": "Execute Asterisk CLI Command.", "ListCommands": "List available manager commands.",
    "UserEvent": "Send an arbitrary event.", "CoreSettings": "Show PBX core settings (version etc).",
    "CoreStatus": "Show PBX core status variables.", "Reload": "Send a reload event.",
    "CoreShowChannels": "List currently active channels.", "ModuleLoad": "Module management.",
    "ModuleCheck": "Check if module is loaded.", "QueueAdd": "Add interface to queue.",
    "PJSIPShowEndpoints": "Lists PJSIP endpoints.",
}


class Session:
    ids = 0

    def __init__(self, peer, reader, writer):
        Session.ids += 1
        self.id = Session.ids
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        addr = writer.get_extra_info("peername") or ("?", 0)
        self.addr = f"{addr[0]}:{addr[1]}"
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.local_sec = f"IPV4/TCP/{local[0]}/{local[1]}"
        self.remote_sec = f"IPV4/TCP/{addr[0]}/{addr[1]}"
        self.session_id = f"0x7f{0x1000000 + self.id * 0x40:010x}"     # a pointer in Asterisk
        self.start_tv = None           # sessionstart_tv: set by a successful login
        self.inbuf = bytearray()
        self.pending = bytearray()
        self.eof = False
        self.too_long = False          # s->parsing == MESSAGE_LINE_TOO_LONG
        self.authenticated = False
        self.username = ""
        self.readperm = 0
        self.writeperm = 0
        self.send_events = -1
        self.challenge = ""
        self.authstart = time.monotonic()
        self.busy = False
        self.held = []                 # events that arrived while an action ran
        self.closed = False
        self.written = 0
        self.watch = None
        try:
            self.transport.set_write_buffer_limits(high=1 << 20)
        except Exception:
            pass

    # ---- output -------------------------------------------------------------------------
    def write(self, data):
        if self.closed:
            return
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.transport.write(data)
        self.written += len(data)
        if self.peer.writetimeout > 0 and self.watch is None \
                and self.transport.get_write_buffer_size() > 0:
            self.watch = asyncio.ensure_future(self._watch_writes())

    async def _watch_writes(self):
        """A write that makes no progress for writetimeout ms ends the session (send_string)."""
        limit = self.peer.writetimeout / 1000.0
        try:
            last = self.written - self.transport.get_write_buffer_size()
            while not self.closed and self.transport.get_write_buffer_size() > 0:
                t0 = time.monotonic()
                await asyncio.sleep(limit)
                if time.monotonic() - t0 > limit * 1.5:
                    # our own loop was busy: no fair judgement this round
                    last = self.written - self.transport.get_write_buffer_size()
                    continue
                sent = self.written - self.transport.get_write_buffer_size()
                if sent == last and self.transport.get_write_buffer_size() > 0:
                    self.peer.log(f"session {self.id} {self.addr}: write timeout, disconnecting")
                    self.close(abort=True)
                    return
                last = sent
        finally:
            self.watch = None

    def deliver(self, data):
        """An event for this session (already checked against its permissions)."""
        if self.busy:
            self.held.append(data)
        else:
            self.write(data)

    def wants(self, cat):
        return (self.authenticated and (self.readperm & cat) == cat
                and (self.send_events & cat) == cat)

    def close(self, abort=False):
        if self.closed:
            return
        self.closed = True
        try:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
                asyncio.get_event_loop().call_later(1.0, self.transport.abort)
        except Exception:
            pass

    def respond(self, lines, resp, msg=None, listflag=None):
        """astman_send_response_full."""
        out = f"Response: {resp}\r\n"
        aid = get_header(lines, "ActionID")
        if aid:
            out += f"ActionID: {aid}\r\n"
        if listflag:
            out += f"EventList: {listflag}\r\n"
        if msg is not None:
            out += f"Message: {msg}\r\n"
        self.write(out + "\r\n")

    def start_ack(self, lines):
        out = "Response: Success\r\n"
        aid = get_header(lines, "ActionID")
        if aid:
            out += f"ActionID: {aid}\r\n"
        return out

    def ack(self, lines, msg=None):
        self.respond(lines, "Success", msg)

    def error(self, lines, msg):
        self.respond(lines, "Error", msg)

    def list_complete(self, lines, event, count, extra=""):
        out = f"Event: {event}\r\n"
        aid = get_header(lines, "ActionID")
        if aid:
            out += f"ActionID: {aid}\r\n"
        self.write(out + f"EventList: Complete\r\nListItems: {count}\r\n{extra}\r\n")

    # ---- input --------------------------------------------------------------------------
    async def _fill(self):
        """Moves socket data into the 1024-byte line buffer; False on EOF or auth timeout."""
        if not self.pending:
            if self.eof:
                return False
            timeout = None
            if not self.authenticated:
                timeout = self.peer.authtimeout - (time.monotonic() - self.authstart)
                if timeout <= 0:
                    self.peer.log(f"session {self.id} {self.addr}: authtimeout")
                    return False
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            except asyncio.TimeoutError:
                self.peer.log(f"session {self.id} {self.addr}: authtimeout")
                return False
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.eof = True
                return False
            self.pending += data
        room = MAXLEN - len(self.inbuf)
        self.inbuf += self.pending[:room]
        del self.pending[:room]
        return True

    async def get_line(self):
        """get_input: one line without its terminator, or None when the session must end."""
        while True:
            nl = self.inbuf.find(b"\n")
            if nl >= 0:
                end = nl - 1 if nl > 0 and self.inbuf[nl - 1] == 0x0D else nl
                line = bytes(self.inbuf[:end])
                del self.inbuf[:nl + 1]
                return line.split(b"\0", 1)[0].decode("latin-1")
            if len(self.inbuf) >= MAXLEN:
                self.peer.log(f"session {self.id} {self.addr}: Discarding message. Line too long")
                self.inbuf = self.inbuf[-1:]
                self.too_long = True
            if not await self._fill():
                return None

    async def run(self):
        self.write(f"Asterisk Call Manager/{self.peer.version}\r\n")
        while not self.closed:
            if await self.do_message() < 0:
                break
        self.close()

    async def do_message(self):
        lines = []
        hdr_loss = False
        while True:
            line = await self.get_line()
            if line is None or self.closed:
                return -1
            if line == "":
                if hdr_loss:
                    self.peer.record(self, lines, "too-many-lines")
                    self.error(lines, "Too many lines in message or allocation failure")
                    return 0
                if self.too_long:
                    self.peer.record(self, lines, "line-too-long")
                    self.error(lines, "Failed to parse message: line too long")
                    self.too_long = False
                    return 0
                self.busy = True
                try:
                    ret = await self.process_message(lines)
                finally:
                    self.busy = False
                    held, self.held = self.held, []
                    for data in held:
                        self.write(data)
                return ret
            if len(lines) < MAX_HEADERS:
                lines.append(line)
            else:
                hdr_loss = True

    async def process_message(self, lines):
        action = get_header(lines, "Action", skip_empty=True)
        if not action:
            self.peer.record(self, lines, "missing-action")
            self.error(lines, "Missing action in request")
            return 0
        la = lower(action)
        if not self.authenticated and la not in ("login", "logoff", "challenge"):
            self.peer.record(self, lines, "not-authenticated")
            self.peer.security(self, "RequestNotAllowed", [("RequestType", f"Action: {action}")])
            self.error(lines, "Permission denied")
            return 0
        entry = ACTIONS.get(la)
        if entry is None:
            self.peer.record(self, lines, "unknown")
            self.peer.security(self, "RequestBadFormat", [("RequestType", f"Action: {action}")])
            msg = (f"Invalid/unknown command: {action}. "
                   "Use Action: ListCommands to show available commands.")
            self.error(lines, msg.encode("latin-1")[:511].decode("latin-1"))
            return 0
        authority, handler = entry[1], entry[2]
        if authority and not (self.writeperm & authority):
            self.peer.record(self, lines, "permission-denied")
            self.peer.security(self, "RequestNotAllowed", [("RequestType", f"Action: {action}")])
            self.error(lines, "Permission denied")
            return 0
        self.peer.record(self, lines, "executed")
        ret = await handler(self, lines)
        return ret or 0


# ---- actions -------------------------------------------------------------------------------

async def act_login(s, m):
    if s.authenticated:
        s.ack(m, "Already authenticated")
        return 0
    user = s.peer.authenticate(s, m)
    if user is None:
        await asyncio.sleep(s.peer.fail_delay)
        s.error(m, "Authentication failed")
        return -1
    s.authenticated = True
    s.peer.unauth -= 1
    # Reported inside authenticate(), queued: it follows the response and FullyBooted.
    s.peer.security(s, "SuccessfulAuth", [("UsingPassword", "0")])
    s.ack(m, "Authentication accepted")
    if (s.send_events & SYSTEM) and (s.readperm & SYSTEM):
        up = int(time.time() - s.peer.started)
        s.write(f"Event: FullyBooted\r\nPrivilege: {authority_to_str(SYSTEM)}\r\n"
                f"Uptime: {up}\r\nLastReload: {up}\r\nStatus: Fully Booted\r\n\r\n")
    return 0


async def act_challenge(s, m):
    if lower(get_header(m, "AuthType")) == "md5":
        if not s.challenge:
            s.challenge = str(random.randint(0, INT_MAX))[:9]
        s.write(s.start_ack(m) + f"Challenge: {s.challenge}\r\n\r\n")
    else:
        s.error(m, "Must specify AuthType")
    return 0


async def act_logoff(s, m):
    s.respond(m, "Goodbye", "Thanks for all the fish.")
    return -1


async def act_ping(s, m):
    now = time.time()
    s.write(s.start_ack(m) + f"Ping: Pong\r\nTimestamp: {int(now)}.{int((now % 1) * 1e6):06d}\r\n\r\n")
    return 0


async def act_events(s, m):
    res = strings_to_mask(get_header(m, "EventMask"))
    if res >= 0:
        s.send_events = res
    aid = get_header(m, "ActionID")
    idt = f"ActionID: {aid}\r\n" if aid else ""
    if res > 0:
        s.write(f"Response: Success\r\n{idt}Events: On\r\n\r\n")
    elif res == 0:
        s.write(f"Response: Success\r\n{idt}Events: Off\r\n\r\n")
    else:
        s.error(m, "Invalid event mask")
    return 0


async def act_listcommands(s, m):
    out = s.start_ack(m)
    for name in sorted(ACTIONS_BY_NAME, key=lower):
        authority = ACTIONS_BY_NAME[name]
        if (s.writeperm & authority) or authority == 0:
            out += f"{name}: {SYNOPSIS.get(name, name)} (Priv: {authority_to_str(authority)})\r\n"
    s.write(out + "\r\n")
    return 0


# res_pjsip's CLI headers as Asterisk 22 prints them (pjsip show auth(s) / endpoints).
AUTH_HEADER = ("  I/OAuth:  <AuthId/UserName" + "." * 61 + ">\n" + "=" * 90 + "\n\n")
ENDPOINTS_HEADER = (
    " Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>\n"
    "    I/OAuth:  <AuthId/UserName...........................................................>\n"
    "        Aor:  <Aor............................................>  <MaxContact>\n"
    "      Contact:  <Aor/ContactUri..........................> <Hash....> <Status> <RTT(ms)..>\n"
    "  Transport:  <TransportId........>  <Type>  <cos>  <tos>  <BindAddress..................>\n"
    "   Identify:  <Identify/Endpoint.........................................................>\n"
    "        Match:  <criteria.........................>\n"
    "    Channel:  <ChannelId......................................>  <State.....>  <Time.....>\n"
    "        Exten: <DialedExten...........>  CLCID: <ConnectedLineCID.......>\n"
    + "=" * 90 + "\n")


def uptime_str(secs):
    """cli.c print_uptimestr: years..minutes with singulars, seconds only when non-zero."""
    parts = []
    for name, size in (("year", 365 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60)):
        if secs > size:
            x, secs = secs // size, secs % size
            parts.append(f"{x} {name}{'' if x == 1 else 's'}")
    if secs > 0 or not parts:
        parts.append(f"{secs} second{'' if secs == 1 else 's'}")
    return ", ".join(parts)


def cli_output(peer, cmd):
    """Deterministic CLI output: (success, text)."""
    words = cmd.split()
    joined = " ".join(lower(w) for w in words)
    if joined in ("core show version", "show version"):
        return True, (f"Asterisk {peer.asterisk_version} built by pbxguard-test @ ami-peer on a "
                      "x86_64 running Linux on 2024-01-01 00:00:00 UTC\n")
    if joined in ("core show channels", "core show channels verbose"):
        fmt = "%-64.64s %-32.32s %-7.7s %-30.30s\n"          # cli.c FORMAT_STRING
        out = fmt % ("Channel", "Location", "State", "Application(Data)")
        for ch in peer.channels.values():
            loc = f"{ch.get('Exten', 's')}@{ch.get('Context', 'from-internal')}:{ch.get('Priority', '1')}"
            app = (f"{ch.get('Application')}({ch.get('ApplicationData')})"[:39]
                   if ch.get("Application") else "(None)")          # appdata[40]
            out += fmt % (ch.name, loc, Channel.STATES.get(ch.state, "Unknown"), app)
        n = len(peer.channels)
        calls = len({ch.get("Linkedid", ch.name) for ch in peer.channels.values()})
        out += f"{n} active channel{'s' if n != 1 else ''}\n"
        out += f"{calls} active call{'s' if calls != 1 else ''}\n"
        out += f"{peer.processed} call{'s' if peer.processed != 1 else ''} processed\n"
        return True, out
    if joined == "core show uptime":
        up = uptime_str(int(time.time() - peer.started))
        return True, f"System uptime: {up}\nLast reload: {up}\n"
    if joined.startswith("pjsip show auth ") and len(words) == 4:
        # res_pjsip/config_auth.c + pjsip_cli.c: the object set, password included.
        auth = peer.auths.get(words[3])
        if auth is None:
            return True, f"\nUnable to find object {words[3]}.\n\n"
        user, password = auth
        fields = [("auth_type", "userpass"), ("md5_cred", ""), ("nonce_lifetime", "32"),
                  ("oauth_clientid", ""), ("oauth_secret", ""), ("password", password),
                  ("password_digest", ""), ("realm", ""), ("refresh_token", ""),
                  ("supported_algorithms_uac", "MD5"), ("supported_algorithms_uas", "MD5"),
                  ("username", user)]
        width = max(13, *(len(n) for n, _ in fields))
        vwidth = max(14, *(len(v) for _, v in fields))
        out = ("\n" + AUTH_HEADER + f"     Auth:  {words[3]}/{user}\n\n"
               f" {'ParameterName':<{width}} : ParameterValue\n {'=' * (width + vwidth + 3)}\n")
        for name, value in fields:
            out += f" {name:<{width}} : {value}\n"
        return True, out + "\n"
    if joined == "pjsip show auths":
        out = "\n" + AUTH_HEADER
        for aid, (user, _) in sorted(peer.auths.items()):
            out += f"     Auth:  {aid}/{user}\n"
        return True, out + f"\nObjects found: {len(peer.auths)}\n\n"
    if joined == "pjsip show endpoints":
        out = "\n" + ENDPOINTS_HEADER
        for ep in ("100", "200"):          # no contacts: Unavailable (max_contacts 0)
            out += (f"\n Endpoint:  {ep:<53}  Unavailable   0 of inf\n"
                    f"     InAuth:  {ep}/{ep}\n        Aor:  {ep:<39} {0:>12}\n")
        return True, out + "\n\nObjects found: 2\n\n"
    roots = {"core", "pjsip", "module", "dialplan", "database", "queue", "manager", "logger",
             "cdr", "channel", "bridge", "stasis", "http", "ari", "rtp", "voicemail", "features"}
    if words and lower(words[0]) in roots:
        return True, f"Command '{cmd}' executed by the AMI peer.\nNo further output.\n"
    # find_best(): the words up to the first one that leaves every command (a mismatch is
    # only forgiven in the last word), so an unknown first word shows the first two.
    best = " ".join(words[:2]) if words else cmd
    return False, (f"No such command '{cmd}' (type 'core show help {best}' for other possible "
                   "commands)\n")


async def act_command(s, m):
    cmd = get_header(m, "Command")
    if not cmd:
        s.error(m, "No command provided")
        return 0
    words = [lower(w) for w in cmd.split(" ") if w.strip()]
    for bl in (["module", "load"], ["module", "unload"], ["restart", "gracefully"]):
        if words[:2] == bl:
            s.error(m, "Command blacklisted")
            return 0
    ok, text = cli_output(s.peer, cmd)
    if text.endswith("\n"):
        text = text[:-1]
    out = f"Response: {'Success' if ok else 'Error'}\r\n"
    aid = get_header(m, "ActionID")
    if aid:
        out += f"ActionID: {aid}\r\n"
    out += "Message: Command output follows\r\n"
    for line in text.split("\n"):
        out += f"Output: {line}\r\n"
    s.write(out + "\r\n")
    return 0


ORIGINATE_APP_SEARCH = ["agi", "dbdeltree", "exec", "externalivr", "mixmonitor", "originate",
                        "reload", "system"]
ORIGINATE_DATA_SEARCH = ["CURL", "DB", "EVAL", "FILE", "ODBC", "REALTIME", "SHELL"]


def originate_app_permitted(app, data, perm):
    for word in ORIGINATE_APP_SEARCH:
        if word in lower(app):
            return bool(perm & SYSTEM)
    if "queue" in lower(app) and data:
        parts = data.split(",")
        if len(parts) > 5 and parts[5]:
            return bool(perm & (AGI | SYSTEM))
    for word in ORIGINATE_DATA_SEARCH:
        if data and word in data:
            return bool(perm & SYSTEM)
    return True


async def act_originate(s, m):
    peer = s.peer
    name = get_header(m, "Channel")
    exten = get_header(m, "Exten")
    context = get_header(m, "Context")
    priority = get_header(m, "Priority")
    timeout = get_header(m, "Timeout")
    app = get_header(m, "Application")
    appdata = get_header(m, "Data")
    callerid = get_header(m, "CallerID")
    aid = get_header(m, "ActionID")
    if len(get_header(m, "ChannelId")) > 150 or len(get_header(m, "OtherChannelId")) > 150:
        s.error(m, "Uniqueid length exceeds maximum of 150\n")
        return 0
    if not name:
        s.error(m, "Channel not specified")
        return 0
    pi = 0
    if priority:
        pi = c_atoi_prefix(priority)
        if pi is None:                 # not a number: Asterisk looks it up as a label
            s.error(m, "Invalid priority")
            return 0
    if timeout and c_atoi_prefix(timeout) is None:
        s.error(m, "Invalid timeout")
        return 0
    if "/" not in name:
        s.error(m, "Invalid channel")
        return 0
    tech, data = name.split("/", 1)
    if app and not originate_app_permitted(app, appdata, s.writeperm):
        s.error(m, "Originate Access Forbidden: app or data blacklisted")
        return 0
    if pi and (not context or not exten or exten == "404"):
        s.error(m, "Extension does not exist.")
        return 0
    num, cname = "", ""
    if callerid:
        mm = re.match(r'\s*"?([^"<]*)"?\s*<([^>]*)>', callerid)
        if mm:
            cname, num = mm.group(1).strip(), mm.group(2).strip()
        elif re.fullmatch(r"[\d+*#]+", callerid.strip()):
            num = callerid.strip()
        else:
            cname = callerid.strip()
    fail = "fail" in lower(data) or (not app and not pi)

    def outcome():
        """The call attempt with its call events: a Local channel is a ;1/;2 pair named
        Local/<data>-<seq>;N (its ;2 runs exten@context), others TECH/<resource>-<seq>."""
        peer.chan_seq += 1
        uid = int(peer.started)
        local = lower(tech) == "local"
        lexten, _, lcontext = data.partition("@")
        first = {"Channel": (f"{tech}/{data}-{peer.chan_seq:08x};1" if local
                             else f"{tech}/{data.split('/')[0]}-{peer.chan_seq:08x}"),
                 "ChannelState": 0, "CallerIDNum": num or "<unknown>",
                 "CallerIDName": cname or "<unknown>",
                 "Context": (lcontext or "default") if local else (context or "default"),
                 "Exten": lexten if local else (exten or "s"), "Priority": "1",
                 "Uniqueid": f"{uid}.{2 * peer.chan_seq}",
                 "Linkedid": f"{uid}.{2 * peer.chan_seq}",
                 "Application": app or "AppDial", "ApplicationData": appdata}
        legs = [Channel(first)]
        if local:
            legs.append(Channel(dict(first, Channel=first["Channel"][:-1] + "2", ChannelState=4,
                                     Uniqueid=f"{uid}.{2 * peer.chan_seq + 1}",
                                     Application="", ApplicationData="")))
        for ch in legs:
            peer.emit_state("Newchannel", ch)
        if fail:
            for ch in reversed(legs[1:]):
                peer.emit_hangup(ch, 0)
            return None, legs[0]
        for ch in reversed(legs):
            ch.state = 6
            peer.emit_state("Newstate", ch)
        for ch in legs:
            peer.channels[ch.name] = ch
        peer.processed += 1
        # Application Wait(N) ends the call after N seconds, as it does on Asterisk.
        if lower(app) == "wait" and c_atoi_prefix(appdata or "x") is not None:
            asyncio.get_event_loop().call_later(float(c_atoi_prefix(appdata)),
                                                peer.hangup_legs, legs)
        return legs[0], legs[0]

    if ast_true(get_header(m, "Async")):
        s.ack(m, "Originate successfully queued")

        async def later():
            await asyncio.sleep(0.02)
            chan, first = outcome()
            body = f"ActionID: {aid}\r\n" if aid else ""
            body += f"Response: {'Success' if chan else 'Failure'}\r\n"
            body += f"Channel: {chan.name if chan else f'{tech}/{data}'}\r\n"
            if app:
                body += f"Application: {app}\r\nData: {appdata}\r\n"
            else:
                body += f"Context: {context}\r\nExten: {exten}\r\n"
            body += f"Reason: {4 if chan else 0}\r\n"
            body += f"Uniqueid: {chan.get('Uniqueid') if chan else (get_header(m, 'ChannelId') or '<unknown>')}\r\n"
            body += f"CallerIDNum: {num or '<unknown>'}\r\nCallerIDName: {cname or '<unknown>'}\r\n"
            peer.emit_raw("OriginateResponse", CALL, body)
            if chan is None:
                peer.emit_hangup(first, 0)

        asyncio.ensure_future(later())
        return 0
    if not app and not pi:
        s.error(m, "Originate with 'Exten' requires 'Context' and 'Priority'")
        return 0
    await asyncio.sleep(0.05)          # the call attempt; the session is blocked meanwhile
    chan, first = outcome()
    if chan:
        s.ack(m, "Originate successfully queued")
    else:
        peer.emit_hangup(first, 0)
        s.error(m, "Originate failed")
    return 0


async def act_coreshowchannels(s, m):
    aid = get_header(m, "ActionID")
    idt = f"ActionID: {aid}\r\n" if aid else ""
    s.respond(m, "Success", "Channels will follow", "start")
    n = 0
    for ch in list(s.peer.channels.values()):
        block, _ = ch.state_block()
        s.write(f"Event: CoreShowChannel\r\n{idt}{block}"
                f"Application: {ch.get('Application')}\r\n"
                f"ApplicationData: {ch.get('ApplicationData')}\r\n"
                f"Duration: {ch.duration()}\r\nBridgeId: {ch.get('BridgeId')}\r\n\r\n")
        n += 1
    s.list_complete(m, "CoreShowChannelsComplete", n)
    return 0


async def act_status(s, m):
    name = get_header(m, "Channel")
    aid = get_header(m, "ActionID")
    variables = get_header(m, "Variables")
    if ("SHELL" in variables or "EVAL" in variables) and not (s.writeperm & SYSTEM):
        s.error(m, "Status Access Forbidden: Variables")
        return 0
    if name:
        ch = s.peer.channels.get(name)
        if ch is None:
            s.error(m, "No such channel")
            return 0
        chans = [ch]
    else:
        chans = list(s.peer.channels.values())
    s.respond(m, "Success", "Channel status will follow", "start")
    idt = f"ActionID: {aid}\r\n" if aid else ""
    for ch in chans:
        block, tech = ch.state_block()
        fmt = "slin" if tech == "Local" else "ulaw"      # Local channels carry signed linear
        var_lines = "".join(f"Variable: {v}={ch.vars.get(v, '')}\r\n"
                            for v in variables.split(",") if v) if variables else ""
        s.write(f"Event: Status\r\nPrivilege: Call\r\n{block}Type: {tech}\r\nDNID: \r\n"
                f"EffectiveConnectedLineNum: {ch.get('ConnectedLineNum', '<unknown>')}\r\n"
                f"EffectiveConnectedLineName: {ch.get('ConnectedLineName', '<unknown>')}\r\n"
                f"TimeToHangup: 0\r\nBridgeID: {ch.get('BridgeId')}\r\n"
                f"Application: {ch.get('Application')}\r\nData: {ch.get('ApplicationData')}\r\n"
                f"Nativeformats: ({fmt})\r\nReadformat: {fmt}\r\nReadtrans: \r\n"
                f"Writeformat: {fmt}\r\n"
                "Writetrans: \r\nCallgroup: 0\r\nPickupgroup: 0\r\n"
                f"Seconds: {int(time.time() - ch.created)}\r\n{var_lines}{idt}\r\n")
    s.list_complete(m, "StatusComplete", len(chans), f"Items: {len(chans)}\r\n")
    return 0


async def act_pjsipshowendpoints(s, m):
    aid = get_header(m, "ActionID")
    idt = f"ActionID: {aid}\r\n" if aid else ""
    s.respond(m, "Success", "A listing of Endpoints follows, presented as EndpointList events",
              "start")
    eps = [c for c, _ in DEFAULT_CONFIGS["pjsip.conf"] if c.isdigit()]
    for ep in eps:
        s.write(f"Event: EndpointList\r\n{idt}ObjectType: endpoint\r\nObjectName: {ep}\r\n"
                f"Transport: \r\nAor: {ep}\r\nAuths: {ep}\r\nOutboundAuths: \r\nContacts: \r\n"
                "DeviceState: Not in use\r\nActiveChannels: \r\n\r\n")
    s.list_complete(m, "EndpointListComplete", len(eps))
    return 0


async def act_hangup(s, m):
    name = get_header(m, "Channel")
    if not name:
        s.error(m, "No channel specified")
        return 0
    cause = c_atoi_prefix(get_header(m, "Cause")) or 16
    peer = s.peer
    if not name.startswith("/"):
        ch = peer.channels.pop(name, None)
        if ch is None:
            s.error(m, "No such channel")
            return 0
        s.ack(m, "Channel Hungup")
        peer.emit_hangup(ch, cause)
        return 0
    if len(name) < 2 or not name.endswith("/"):
        s.error(m, "Regex format invalid, Channel param should be /regex/")
        return 0
    try:
        rx = re.compile(name[1:-1])
    except re.error:
        s.error(m, f"Regex compile failed on: {name}")
        return 0
    aid = get_header(m, "ActionID")
    idt = f"ActionID: {aid}\r\n" if aid else ""
    s.respond(m, "Success", "Channels hung up will follow", "start")
    n = 0
    for cname in list(peer.channels):
        if rx.search(cname):
            ch = peer.channels.pop(cname)
            s.write(f"Event: ChannelHungup\r\nChannel: {cname}\r\n{idt}\r\n")
            peer.emit_hangup(ch, cause)
            n += 1
    s.list_complete(m, "ChannelsHungupListComplete", n)
    return 0


async def act_redirect(s, m):
    name = get_header(m, "Channel")
    context = get_header(m, "Context")
    exten = get_header(m, "Exten")
    priority = get_header(m, "Priority")
    for value, what in ((name, "Channel"), (context, "Context"), (exten, "Exten"),
                        (priority, "Priority")):
        if not value:
            s.error(m, f"{what} not specified")
            return 0
    pi = c_atoi_prefix(priority)
    if pi is None or pi < 1:
        s.error(m, "Priority is invalid")
        return 0
    ch = s.peer.channels.get(name)
    if ch is None:
        s.error(m, f"Channel does not exist: {name}")
        return 0
    extra = get_header(m, "ExtraChannel")
    if extra:
        ch2 = s.peer.channels.get(extra)
        if ch2 is None:
            s.error(m, f"ExtraChannel does not exist: {extra}")
            return 0
        s.ack(m, "Dual Redirect successful")
        return 0
    ch.f.update({"Context": context, "Exten": exten, "Priority": str(pi)})
    s.ack(m, "Redirect successful")
    return 0


async def act_setvar(s, m):
    name = get_header(m, "Channel")
    var = get_header(m, "Variable")
    if not var:
        s.error(m, "No variable specified")
        return 0
    if name:
        ch = s.peer.channels.get(name)
        if ch is None:
            s.error(m, "No such channel")
            return 0
        ch.vars[var] = get_header(m, "Value")
    else:
        s.peer.globals[var] = get_header(m, "Value")
    s.ack(m, "Variable Set")
    return 0


async def act_getvar(s, m):
    name = get_header(m, "Channel")
    var = get_header(m, "Variable")
    if not var:
        s.error(m, "No variable specified")
        return 0
    if ("SHELL" in var or "EVAL" in var) and not (s.writeperm & SYSTEM):
        s.error(m, "GetVar Access Forbidden: Variable")
        return 0
    store = s.peer.globals
    if name:
        ch = s.peer.channels.get(name)
        if ch is None:
            s.error(m, "No such channel")
            return 0
        store = ch.vars
    s.write(s.start_ack(m) + f"Variable: {var}\r\nValue: {store.get(var, '')}\r\n\r\n")
    return 0


def config_lookup(s, m, header="Filename"):
    fn = get_header(m, header)
    if not fn:
        s.error(m, "Filename not specified")
        return None, None
    if fn.strip().startswith("/") or ".." in fn:
        s.error(m, "File requires escalated privileges")
        return None, None
    cfg = s.peer.configs.get(fn.strip())
    if cfg is None:
        s.error(m, "Config file not found")
        return None, None
    return fn.strip(), cfg


async def act_getconfig(s, m):
    fn, cfg = config_lookup(s, m)
    if cfg is None:
        return 0
    category = get_header(m, "Category")
    out = s.start_ack(m)
    n = 0
    for cat, items in cfg:
        if category and cat != category:
            continue
        out += f"Category-{n:06d}: {cat}\r\n"
        for i, (k, v) in enumerate(items):
            out += f"Line-{n:06d}-{i:06d}: {k}={v}\r\n"
        n += 1
    if category and n == 0:
        out += "No categories found\r\n"
    s.write(out + "\r\n")
    return 0


async def act_listcategories(s, m):
    fn, cfg = config_lookup(s, m)
    if cfg is None:
        return 0
    out = s.start_ack(m)
    for n, (cat, _) in enumerate(cfg):
        out += f"Category-{n:06d}: {cat}\r\n"
    if not cfg:
        out += "Error: no categories found\r\n"
    s.write(out + "\r\n")
    return 0


async def act_updateconfig(s, m):
    if not get_header(m, "SrcFilename") or not get_header(m, "DstFilename"):
        s.error(m, "Filename not specified")
        return 0
    src, cfg = config_lookup(s, m, "SrcFilename")
    if cfg is None:
        return 0
    dst = get_header(m, "DstFilename").strip()
    cfg = [(c, list(items)) for c, items in cfg]
    for x in range(100000):
        action = get_header(m, f"Action-{x:06d}")
        if not action:
            break
        cat = get_header(m, f"Cat-{x:06d}")
        var = get_header(m, f"Var-{x:06d}")
        value = get_header(m, f"Value-{x:06d}")
        if not cat:
            s.error(m, "Category not specified")
            return 0
        cats = [c for c in cfg if c[0] == cat]
        la = lower(action)
        if la == "newcat":
            if cats:
                s.error(m, "Create category did not complete successfully")
                return 0
            cfg.append((cat, []))
        elif la in ("delcat", "emptycat", "update", "append", "delete"):
            if not cats:
                s.error(m, "Given category does not exist")
                return 0
            if la == "delcat":
                cfg = [c for c in cfg if c[0] != cat]
            elif la == "emptycat":
                for c in cats:
                    c[1].clear()
            elif not var:
                s.error(m, "Problem with category, value, or line (if required)")
                return 0
            elif la == "append":
                for c in cats:
                    c[1].append((var, value))
            elif la == "update":
                found = False
                for c in cats:
                    for i, (k, _) in enumerate(c[1]):
                        if k == var:
                            c[1][i] = (k, value)
                            found = True
                if not found:
                    s.error(m, "Update did not complete successfully")
                    return 0
            else:
                for c in cats:
                    c[1][:] = [(k, v) for k, v in c[1] if k != var]
        else:
            s.error(m, "Unknown action command")
            return 0
    s.peer.configs[dst] = cfg
    s.ack(m)
    return 0


async def act_moduleload(s, m):
    module = get_header(m, "Module")
    loadtype = get_header(m, "LoadType")
    # manager_moduleload does not return after these two errors (yes, several responses)
    if not loadtype:
        s.error(m, "Incomplete ModuleLoad action.")
    if not module and lower(loadtype) != "reload":
        s.error(m, "Need module name")
    stripped = module.strip()
    if "/" in stripped or ".." in stripped:
        s.error(m, "Module must be in the configured modules directory.")
        return 0
    if stripped and stripped not in MODULES:
        s.error(m, "Module not found.")
        return 0
    lt = lower(loadtype)
    if lt == "load":
        s.ack(m, "Module loaded.")
    elif lt == "unload":
        s.ack(m, "Module unloaded.")
    elif lt == "refresh":
        s.ack(m, "Module unloaded and loaded.")
    elif lt == "reload":
        s.ack(m, "Module reloaded." if stripped else "All modules reloaded")
    else:
        s.error(m, "Incomplete ModuleLoad action.")
    return 0


async def act_modulecheck(s, m):
    module = get_header(m, "Module")
    if module.strip() not in MODULES and module.strip() + ".so" not in MODULES:
        s.error(m, "Module not loaded")
        return 0
    s.write(s.start_ack(m) + "Version: \r\n\r\n")
    return 0


async def act_reload(s, m):
    module = get_header(m, "Module")
    if module and module not in MODULES and module + ".so" not in MODULES:
        s.error(m, "No such module")
    else:
        s.ack(m, "Module Reloaded")
    return 0


async def act_coresettings(s, m):
    p = s.peer
    s.write(s.start_ack(m) +
            f"AMIversion: {p.version}\r\nAsteriskVersion: {p.asterisk_version}\r\n"
            f"SystemName: {p.systemname}\r\nCoreMaxCalls: 0\r\nCoreMaxLoadAvg: 0.000000\r\n"
            f"CoreRunUser: {p.runuser}\r\nCoreRunGroup: {p.runuser}\r\nCoreMaxFilehandles: 0\r\n"
            "CoreRealTimeEnabled: No\r\nCoreCDRenabled: Yes\r\nCoreHTTPenabled: No\r\n"
            "SoundsSearchCustomDir: No\r\n\r\n")
    return 0


async def act_corestatus(s, m):
    p = s.peer
    t = time.localtime(p.started)
    d, hms = time.strftime("%Y-%m-%d", t), time.strftime("%H:%M:%S", t)
    s.write(s.start_ack(m) +
            f"CoreStartupDate: {d}\r\nCoreStartupTime: {hms}\r\nCoreReloadDate: {d}\r\n"
            f"CoreReloadTime: {hms}\r\nCoreCurrentCalls: {len(p.channels)}\r\n"
            f"CoreProcessedCalls: {p.processed}\r\n\r\n")
    return 0


async def act_userevent(s, m):
    event = get_header(m, "UserEvent")
    body = "".join(f"{h}\r\n" for h in m
                   if not lower(h).startswith("userevent:") and not lower(h).startswith("action:"))
    s.ack(m, "Event Sent")
    s.peer.emit_raw("UserEvent", USER, f"UserEvent: {event}\r\n{body}")
    return 0


async def act_queueadd(s, m):
    queue = get_header(m, "Queue")
    iface = get_header(m, "Interface")
    if not queue or not iface:
        s.error(m, "'Queue' or 'Interface' not set.")
        return 0
    members = s.peer.queues.get(queue)
    if members is None:
        s.error(m, "Unable to add interface to queue: No such queue")
        return 0
    if iface in members:
        s.error(m, "Unable to add interface: Already there")
        return 0
    members.add(iface)
    s.ack(m, "Added interface to queue")
    member = get_header(m, "MemberName") or iface
    s.peer.emit_raw("QueueMemberAdded", AGENT,
                    f"Queue: {queue}\r\nMemberName: {member}\r\nInterface: {iface}\r\n"
                    f"StateInterface: {iface}\r\nMembership: dynamic\r\n"
                    f"Penalty: {get_header(m, 'Penalty') or 0}\r\nCallsTaken: 0\r\nLastCall: 0\r\n"
                    "LastPause: 0\r\nLoginTime: 0\r\nInCall: 0\r\nStatus: 1\r\n"
                    f"Paused: {1 if ast_true(get_header(m, 'Paused')) else 0}\r\nPausedReason: \r\n"
                    "Ringinuse: 1\r\nWrapuptime: 0\r\n")
    return 0


ACTION_TABLE = [
    ("Ping", 0, act_ping), ("Events", 0, act_events), ("Logoff", 0, act_logoff),
    ("Login", 0, act_login), ("Challenge", 0, act_challenge),
    ("ListCommands", 0, act_listcommands),
    ("Hangup", SYSTEM | CALL, act_hangup),
    ("Status", SYSTEM | CALL | REPORTING, act_status),
    ("Setvar", CALL, act_setvar), ("Getvar", CALL | REPORTING, act_getvar),
    ("GetConfig", SYSTEM | CONFIG, act_getconfig), ("UpdateConfig", CONFIG, act_updateconfig),
    ("ListCategories", CONFIG, act_listcategories), ("Redirect", CALL, act_redirect),
    ("Originate", ORIGINATE, act_originate), ("Command", COMMAND, act_command),
    ("UserEvent", USER, act_userevent),
    ("CoreSettings", SYSTEM | REPORTING, act_coresettings),
    ("CoreStatus", SYSTEM | REPORTING, act_corestatus),
    ("Reload", CONFIG | SYSTEM, act_reload),
    ("CoreShowChannels", SYSTEM | REPORTING, act_coreshowchannels),
    ("ModuleLoad", SYSTEM, act_moduleload), ("ModuleCheck", SYSTEM, act_modulecheck),
    ("QueueAdd", AGENT, act_queueadd),
    ("PJSIPShowEndpoints", SYSTEM, act_pjsipshowendpoints),
]
ACTIONS = {lower(name): (name, auth, fn) for name, auth, fn in ACTION_TABLE}
ACTIONS_BY_NAME = {name: auth for name, auth, _ in ACTION_TABLE}


class Peer:
    def __init__(self, args):
        self.version = args.version
        major = args.version.split(".")[0]
        self.asterisk_version = args.asterisk_version or ASTERISK_FOR_AMI.get(major, "20.7.0")
        self.authtimeout = args.authtimeout
        self.authlimit = args.authlimit
        self.writetimeout = args.writetimeout
        self.fail_delay = args.fail_delay
        self.systemname = args.systemname or ""
        self.runuser = args.runuser
        self.timestampevents = args.timestampevents
        self.users = {}
        for spec in args.user:
            parts = spec.split(":")
            if len(parts) < 2:
                sys.exit(f"--user {spec!r}: want NAME:SECRET[:READ[:WRITE]]")
            name, secret = parts[0], parts[1]
            read = parts[2] if len(parts) > 2 else "all"
            write = parts[3] if len(parts) > 3 else "all"
            self.users[lower(name)] = {"name": name, "secret": secret,
                                       "read": get_perm(read), "write": get_perm(write)}
        self.sessions = []
        self.unauth = 0
        self.actions = []
        self.started = time.time()
        self.logfile = open(args.log, "a", buffering=1) if args.log else None
        self.channels = {}
        self.set_channels(DEFAULT_CHANNELS)
        self.chan_seq = 0x100
        self.processed = 0
        self.globals = {}
        self.configs = {k: [(c, list(i)) for c, i in v] for k, v in DEFAULT_CONFIGS.items()}
        self.queues = {"support": set(), "sales": set()}
        self.auths = {}
        for spec in args.pjsip_auth:
            aid, user, password = spec.split(":", 2)
            self.auths[aid] = (user, password)

    def set_channels(self, lst):
        self.channels = {}
        for d in lst:
            ch = Channel(d)
            self.channels[ch.name] = ch

    def log(self, text):
        if self.logfile:
            self.logfile.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def authenticate(self, s, m):
        username = get_header(m, "Username")
        if not username:
            return None
        user = self.users.get(lower(username))
        if user is None:
            self.log(f"{s.addr} tried to authenticate with nonexistent user '{username}'")
            self.security(s, "InvalidAccountID", [], account=username)
            return None
        if lower(get_header(m, "AuthType")) == "md5":
            key = get_header(m, "Key")
            if not (key and s.challenge and user["secret"]):
                return None
            want = hashlib.md5((s.challenge + user["secret"]).encode("latin-1")).hexdigest()
            if key != want:
                # manager.c reports the expected key too (and no account: not logged in yet).
                self.security(s, "ChallengeResponseFailed", [
                    ("Challenge", s.challenge), ("Response", key), ("ExpectedResponse", want)])
                return None
        elif user["secret"]:
            if get_header(m, "Secret") != user["secret"]:
                self.security(s, "InvalidPassword", [], account=username)
                return None
        s.username = username
        s.start_tv = time.time()
        s.readperm = user["read"]
        s.writeperm = user["write"]
        mask = strings_to_mask(get_header(m, "Events"))
        if mask >= 0:
            s.send_events = mask
        return user

    def record(self, s, lines, outcome):
        self.actions.append({
            "action": to_json_str(get_header(lines, "Action", skip_empty=True)),
            "headers": header_pairs(lines),
            "user": to_json_str(s.username),
            "authenticated": s.authenticated,
            "peer": s.addr,
            "session": s.id,
            "outcome": outcome,
            "time": time.time(),
        })
        self.log(f"session {s.id} {s.addr} user={s.username!r}: {outcome} {lines!r}")

    # security_events.c: severity and EventVersion per event; RequestBadFormat has AccountID
    # among its optional fields (after SessionTV), the others among the required ones.
    SECURITY_EVENTS = {"SuccessfulAuth": ("Informational", 1), "InvalidAccountID": ("Error", 1),
                       "InvalidPassword": ("Error", 2), "ChallengeResponseFailed": ("Error", 1),
                       "RequestNotAllowed": ("Error", 1), "RequestBadFormat": ("Error", 1)}

    def security(self, s, name, fields, account=None):
        """ast_security_event_report for AMI, as manager.c raises it (class security)."""
        def tv(t):
            return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
                    + f".{int((t % 1) * 1000):03d}+0000")
        severity, version = self.SECURITY_EVENTS[name]
        account = s.username if account is None else account
        body = f"EventTV: {tv(time.time())}\r\nSeverity: {severity}\r\nService: AMI\r\n"
        body += f"EventVersion: {version}\r\n"
        if name != "RequestBadFormat":
            body += f"AccountID: {account}\r\n"
        body += (f"SessionID: {s.session_id}\r\nLocalAddress: {s.local_sec}\r\n"
                 f"RemoteAddress: {s.remote_sec}\r\n")
        body += "".join(f"{k}: {v}\r\n" for k, v in fields)
        body += f"SessionTV: {tv(s.start_tv or 0)}\r\n"
        if name == "RequestBadFormat" and account:
            body += f"AccountID: {account}\r\n"
        self.emit_raw(name, SECURITY, body)

    def event_head(self, name, cat):
        out = f"Event: {name}\r\nPrivilege: {authority_to_str(cat)}\r\n"
        if self.timestampevents:
            now = time.time()
            out += f"Timestamp: {int(now)}.{int((now % 1) * 1e6):06d}\r\n"
        if self.systemname:
            out += f"SystemName: {self.systemname}\r\n"
        return out

    def emit_raw(self, name, cat, body, count=1):
        data = (self.event_head(name, cat) + body + "\r\n").encode("latin-1") * count
        n = 0
        for s in list(self.sessions):
            if s.wants(cat):
                s.deliver(data)
                n += 1
        return n

    def emit_state(self, name, ch):
        """Newchannel / Newstate: the channel snapshot block only."""
        block, _ = ch.state_block()
        self.emit_raw(name, CALL, block)

    def hangup_legs(self, legs):
        for ch in legs:
            if self.channels.pop(ch.name, None) is not None:
                self.emit_hangup(ch, 0)

    def emit_hangup(self, ch, cause):
        block, _ = ch.state_block()
        texts = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "No user responding",
                 21: "Call Rejected", 34: "Circuit/channel congestion"}
        self.emit_raw("Hangup", CALL, f"{block}Cause: {cause}\r\nCause-txt: "
                      f"{texts.get(cause, 'Unknown')}\r\n")

    # ---- AMI listener -----------------------------------------------------------------
    async def on_connect(self, reader, writer):
        if self.unauth >= self.authlimit:
            writer.close()             # no banner, no message
            return
        self.unauth += 1
        s = Session(self, reader, writer)
        self.sessions.append(s)
        self.log(f"session {s.id} connect from {s.addr}")
        try:
            await s.run()
        except Exception as e:  # a bug here must not take the peer down
            self.log(f"session {s.id} crashed: {e!r}")
            s.close(abort=True)
        finally:
            if not s.authenticated:
                self.unauth -= 1
            if s in self.sessions:
                self.sessions.remove(s)
            self.log(f"session {s.id} {s.addr} closed")

    # ---- control port -----------------------------------------------------------------
    async def on_control(self, reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
                ans = await self.control(req)
            except Exception as e:
                ans = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write((json.dumps(ans) + "\n").encode())
            await writer.drain()
        writer.close()

    async def control(self, req):
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "event":
            cat = self.parse_class(req.get("class", "call"))
            body = self.fields_text(req.get("fields", {}))
            n = self.emit_raw(from_json_str(req["name"]), cat, body, int(req.get("count", 1)))
            await self.drain_all()
            await self.flushed(list(self.sessions), 10.0)
            return {"ok": True, "sent": n}
        if cmd == "blast":
            return await self.blast(req)
        if cmd == "actions":
            return {"ok": True, "actions": self.actions}
        if cmd == "clear":
            self.actions = []
            return {"ok": True}
        if cmd == "sessions":
            return {"ok": True, "sessions": [
                {"id": s.id, "user": to_json_str(s.username), "authenticated": s.authenticated,
                 "peer": s.addr, "read": authority_to_str(s.readperm) if s.authenticated else "",
                 "write": authority_to_str(s.writeperm) if s.authenticated else "",
                 "events": s.send_events} for s in self.sessions]}
        if cmd == "drop":
            n = len(self.sessions)
            for s in list(self.sessions):
                s.close()
            return {"ok": True, "dropped": n}
        if cmd == "channels":
            if "channels" in req:
                self.set_channels(req["channels"])
            return {"ok": True, "channels": [ch.name for ch in self.channels.values()]}
        return {"ok": False, "error": f"unknown cmd {cmd!r}"}

    @staticmethod
    def parse_class(c):
        if isinstance(c, int):
            return c
        return get_perm(str(c))

    @staticmethod
    def fields_text(fields):
        items = fields.items() if isinstance(fields, dict) else fields
        return "".join(f"{from_json_str(k)}: {from_json_str(v)}\r\n" for k, v in items)

    async def drain_all(self, sessions=None):
        async def one(s):
            try:
                await asyncio.wait_for(s.writer.drain(), 10)
            except Exception:
                pass
        await asyncio.gather(*(one(s) for s in (sessions or list(self.sessions))))

    async def flushed(self, sessions, timeout=30.0):
        """Waits until everything written to these sessions has been handed to the kernel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.closed or s.transport.get_write_buffer_size() == 0 for s in sessions):
                return
            await asyncio.sleep(0.001)

    async def blast(self, req):
        cat = self.parse_class(req.get("class", "call"))
        count = int(req.get("count", 1000))
        # rate: events per second to pace at (0: as fast as the sockets take them).
        rate = float(req.get("rate", 0))
        batch = int(req.get("batch", max(1, int(rate / 100)) if rate else 2000))
        head = self.event_head(from_json_str(req.get("name", "Blast")), cat).encode("latin-1")
        head += self.fields_text(req.get("fields", {})).encode("latin-1")
        # seconds: emit for this long (as fast as the sessions take it) instead of `count`.
        seconds = float(req.get("seconds", 0))
        targets = [s for s in self.sessions if s.wants(cat)]
        t0 = time.monotonic()
        total = 0
        start = 0
        while (time.monotonic() - t0 < seconds) if seconds else start < count:
            end = start + batch if seconds else min(count, start + batch)
            chunk = b"".join(b"%sSeq: %d\r\n\r\n" % (head, i) for i in range(start, end))
            for s in targets:
                s.deliver(chunk)
            total += len(chunk)
            start = end
            await self.drain_all([s for s in targets if not s.closed])
            if rate:
                ahead = t0 + start / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        count = start
        await self.flushed(targets)
        return {"ok": True, "sent": len(targets), "count": count, "bytes": total,
                "seconds": round(time.monotonic() - t0, 6),
                "closed": sum(1 for s in targets if s.closed)}


async def main():
    ap = argparse.ArgumentParser(description="Asterisk AMI stand-in for tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--version", default="11.0.0", help="AMI_VERSION shown in the banner (Asterisk 22)")
    ap.add_argument("--asterisk-version", default=None)
    ap.add_argument("--user", action="append", default=[])
    ap.add_argument("--authtimeout", type=float, default=30)
    ap.add_argument("--authlimit", type=int, default=50)
    ap.add_argument("--writetimeout", type=float, default=100, help="ms; 0 disables")
    ap.add_argument("--fail-delay", type=float, default=1.0, help="seconds before 'Authentication failed'")
    ap.add_argument("--systemname", default="")
    ap.add_argument("--runuser", default="",
                    help="CoreSettings' CoreRunUser/Group (empty: Asterisk started without -U)")
    ap.add_argument("--timestampevents", action="store_true")
    ap.add_argument("--log", default=None)
    ap.add_argument("--pjsip-auth", action="append", default=[],
                    help="ID:USERNAME:PASSWORD, shown by `pjsip show auth ID` as Asterisk does")
    args = ap.parse_args()
    peer = Peer(args)
    ami = await asyncio.start_server(peer.on_connect, args.host, args.port,
                                     reuse_address=True, limit=1 << 20)
    ctl = await asyncio.start_server(peer.on_control, args.host, args.control_port,
                                     limit=16 << 20)
    port = ami.sockets[0].getsockname()[1]
    cport = ctl.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY port={port} control={cport}\n")
    sys.stdout.flush()
    async with ami, ctl:
        await asyncio.gather(ami.serve_forever(), ctl.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
