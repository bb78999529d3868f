#!/usr/bin/python3
"""Drive Debian's baresip 1.0.0 through one scenario and print one JSON line with the result.

    baresip_call.py --registrar "sip:127.0.0.1:5061;transport=tls" --user 1001 --password pw1
                    [--mediaenc srtp-mand|srtp|srtp-mandf|dtls_srtp|none] [--dial 2000 | --answer]
                    [--ca FILE] [--domain NAME] [--timeout 15] [--hold 1] [--keep]
                    [--net-interface ADDR] [--sip-listen ADDR:PORT] [--rtp-stats]

--dial calls, stays --hold seconds, hangs up. --answer stays registered (answermode=auto) and
follows the first incoming call the same way.

baresip runs headless from a throw-away config dir (-f DIR): audio comes from the ausine module
and goes to an aubridge device nobody listens to, so no sound card is needed; no video.
It is driven through the ctrl_tcp module (JSON in netstrings: commands in, events out), which is
the only interface of 1.0.0 that reports what happens (REGISTER_OK, CALL_ESTABLISHED,
CALL_CLOSED + reason...). The SIP trace (-s) goes to DIR/baresip.log; the SDP baresip sent and
received is lifted from it into the result.

Result: {"registered": bool, "register_code": int|null, "register_reason": str,
         "call": "established"|"failed"|"timeout"|null, "call_code": int|null, "reason": str,
         "closed_by": "local"|"remote", "menc": CALL_MENC param (SRTP suite) when secured,
         "offer": [SDP m=/crypto/fingerprint/setup lines baresip sent],
         "answer": [same, from the answer it got], "events": [event types in order],
         "rtp": {"tx": packets sent, "rx": packets received} (audio, --rtp-stats) or null,
         "rtp_from": address baresip's audio stream first received RTP from, or null}
Exit status 0 when registration (and the call, when --dial is given) succeeded, else 1.

TLS: baresip 1.0.0 has only `sip_cafile` (no sip_verify_server, no hostname check); --ca writes
it. See tests/peers/README.md for what it does and does not verify.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BARESIP = "/usr/bin/baresip"
MODULES = "/usr/lib/baresip/modules"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(cfg_dir, args, ctrl_port):
    """config + accounts for a headless, single-account baresip."""
    config = [
        "poll_method epoll",
        "sip_listen %s" % args.sip_listen,     # ephemeral port: never a clash with 5060
        "call_local_timeout %d" % max(5, int(args.timeout)),
        "call_max_calls 4",
        "net_interface %s" % args.net_interface,  # SDP c=127.0.0.1, not eth0's address
        # ausine: 48 kHz stereo only; baresip resamples for G.711.
        "audio_source ausine,440", "ausrc_srate 48000", "ausrc_channels 2",
        "audio_player aubridge,nowhere", "audio_alert aubridge,nowhere",
        "rtcp_mux no", "jitter_buffer_delay 5-10",
        "module_path " + MODULES,
        "module g711.so", "module ausine.so", "module aubridge.so",
        "module srtp.so", "module dtls_srtp.so",
        "module_tmp uuid.so", "module_tmp account.so",
        "module_app menu.so",                  # provides the dial/hangup/quit commands
        "module_app ctrl_tcp.so",
        "ctrl_tcp_listen 127.0.0.1:%d" % ctrl_port,
    ]
    if args.rtp_stats:
        config.append("rtp_stats yes")         # printed to the log when the call closes
    if args.ca:
        config.append("sip_cafile " + os.path.abspath(args.ca))
    if args.cert:
        config.append("sip_certificate " + os.path.abspath(args.cert))
    with open(os.path.join(cfg_dir, "config"), "w") as f:
        f.write("\n".join(config) + "\n")
    # No account in the file: it is created with 'uanew' once ctrl_tcp is connected, otherwise
    # REGISTER_OK can fire before anyone listens (it takes a few ms on loopback).
    for name in ("accounts", "contacts"):
        open(os.path.join(cfg_dir, name), "w").close()


def account_line(args):
    """<sip:USER@HOST:PORT;transport=T>;auth_pass=..;mediaenc=.. (+ outbound when --domain)."""
    m = re.match(r"sips?:([^;]+)(;.*)?$", args.registrar)
    if not m:
        sys.exit("--registrar must look like sip:HOST:PORT;transport=tls")
    hostport, params = m.group(1), m.group(2) or ""
    aor = "sip:%s@%s%s" % (args.user, args.domain or hostport, params)
    line = "<%s>;auth_pass=%s;answermode=%s;regint=%d" % (
        aor, args.password, "auto" if args.answer else "manual", args.regint)
    if args.mediaenc != "none":
        line += ";mediaenc=" + args.mediaenc
    if args.domain:
        line += ';outbound="%s"' % args.registrar
    return line


class Ctrl:
    """ctrl_tcp client: netstring-framed JSON ('LEN:JSON,')."""

    def __init__(self, port, deadline):
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""

    def command(self, command, params="", token="t"):
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(b"%d:%s," % (len(data), data))

    def next(self, deadline):
        """Next JSON object (event or response), or None at the deadline."""
        while True:
            m = re.match(rb"(\d+):", self.buf)
            if m and len(self.buf) >= m.end() + int(m.group(1)) + 1:
                n = int(m.group(1))
                obj = json.loads(self.buf[m.end():m.end() + n])
                self.buf = self.buf[m.end() + n + 1:]
                return obj
            remaining = deadline - time.time()
            if remaining <= 0:
                return None
            self.sock.settimeout(min(remaining, 0.5))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            self.buf += chunk


def status_code(text):
    m = re.match(r"\s*(\d{3})\b", text or "")
    return int(m.group(1)) if m else None


def sdp_lines(trace, first_line_re):
    """Interesting SDP lines of the first traced message whose start line matches."""
    for block in re.split(r"\n(?=(?:UDP|TCP|TLS|WS|WSS) \S+ -> \S+\n)", trace):
        lines = block.split("\n")
        if (len(lines) > 1 and re.match(first_line_re, lines[1])
                and any(l.startswith("m=") for l in lines)):
            return [l.strip() for l in lines if re.match(
                r"(m=|a=crypto|a=fingerprint|a=setup|c=)", l.strip())]
    return []


def rtp_stats(trace):
    """Audio packet counts of the rtp_stats block ("audio  Transmit: Receive:" then "packets:
    TX RX") and the address the audio stream first received RTP from."""
    rtp = None
    m = re.search(r"audio\s+Transmit:\s+Receive:\s*\n\s*packets:\s+(\d+)\s+(\d+)", trace)
    if m:
        rtp = {"tx": int(m.group(1)), "rx": int(m.group(2))}
    m = re.search(r"incoming rtp for 'audio' established, receiving from (\S+)", trace)
    return rtp, (m.group(1) if m else None)


def wait_for(ctrl, deadline, wanted, result):
    """Collect events until one whose type is in wanted; returns it (None at the deadline)."""
    while True:
        ev = ctrl.next(deadline)
        if ev is None:
            return None
        if ev.get("event"):
            param = ev.get("param")
            result["events"].append(ev.get("type") + (": " + param if param else ""))
            if ev.get("type") == "CALL_MENC":
                result["menc"] = param
            if ev.get("type") in wanted:
                return ev


def run(args, cfg_dir):
    result = {"registered": False, "register_code": None, "register_reason": "",
              "call": None, "call_code": None, "reason": "", "offer": [], "answer": [],
              "events": []}
    ctrl_port = free_port()
    write_config(cfg_dir, args, ctrl_port)
    log_path = os.path.join(cfg_dir, "baresip.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([BARESIP, "-f", cfg_dir, "-s"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + args.timeout
    try:
        ctrl = Ctrl(ctrl_port, deadline)
        ctrl.command("uanew", account_line(args))
        ev = wait_for(ctrl, deadline, {"REGISTER_OK", "REGISTER_FAIL"}, result)
        if ev is None:
            result["register_reason"] = "timeout"
        else:
            result["registered"] = ev["type"] == "REGISTER_OK"
            result["register_reason"] = ev.get("param", "")
            result["register_code"] = status_code(ev.get("param")) or (
                200 if result["registered"] else None)
        if args.dial and (result["registered"] or args.dial_anyway):
            ctrl.command("dial", args.dial)
            in_call(ctrl, args, deadline, result)
        elif args.answer and result["registered"]:
            in_call(ctrl, args, deadline, result)      # answermode=auto picks it up
        ctrl.command("quit")
    except OSError as exc:
        result["reason"] = result["reason"] or "ctrl_tcp: %s" % exc
    finally:
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    trace = open(log_path, encoding="utf-8", errors="replace").read()
    trace = re.sub(r"\x1b\[[0-9;]*m", "", trace)
    # Outgoing: baresip's offer is in its INVITE. Incoming (--answer): the offer is the
    # peer's INVITE and baresip's answer its 200.
    result["offer"] = sdp_lines(trace, r"INVITE ")
    if result["offer"]:
        result["answer"] = sdp_lines(trace, r"SIP/2.0 (200|183) " if args.answer
                                     else r"SIP/2.0 (18[03]|200) ")
    result["rtp"], result["rtp_from"] = rtp_stats(trace)
    if args.keep:
        result["config_dir"] = cfg_dir
    return result


def in_call(ctrl, args, deadline, result):
    """Follow the call (ours or an incoming one) to established/closed, hold, hang up."""
    ev = wait_for(ctrl, deadline, {"CALL_ESTABLISHED", "CALL_CLOSED"}, result)
    if ev is None:
        result["call"], result["reason"] = "timeout", "no CALL_ESTABLISHED/CALL_CLOSED"
        ctrl.command("hangup")
        return
    if ev["type"] == "CALL_CLOSED":
        result["call"], result["reason"] = "failed", ev.get("param", "")
        result["call_code"] = status_code(ev.get("param"))
        return
    result["call"], result["call_code"] = "established", 200
    # Stay in the call a moment: the edge may tear it down (e.g. plain RTP answer).
    hold_until = min(deadline, time.time() + args.hold)
    ev = wait_for(ctrl, hold_until, {"CALL_CLOSED"}, result)
    if ev is not None:
        result["reason"] = "closed by far end: " + ev.get("param", "")
        result["closed_by"] = "remote"
        return
    ctrl.command("hangup")
    ev = wait_for(ctrl, min(deadline, time.time() + 3), {"CALL_CLOSED"}, result)
    result["reason"] = ev.get("param", "") if ev else "hangup: no CALL_CLOSED"
    result["closed_by"] = "local"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registrar", required=True, help='e.g. "sip:127.0.0.1:5061;transport=tls"')
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--mediaenc", default="srtp-mand",
                    choices=["srtp-mand", "srtp-mandf", "srtp", "dtls_srtp", "none"])
    ap.add_argument("--dial", help="number or URI to call after registering")
    ap.add_argument("--answer", action="store_true",
                    help="no dial: stay registered, auto-answer the first incoming call")
    ap.add_argument("--dial-anyway", action="store_true", help="dial even if REGISTER failed")
    ap.add_argument("--ca", help="PEM file for sip_cafile (CA or the self-signed cert)")
    ap.add_argument("--cert", help="PEM cert+key for sip_certificate (client cert)")
    ap.add_argument("--domain", help="AOR domain; the registrar is then used as outbound proxy")
    ap.add_argument("--regint", type=int, default=3600)
    ap.add_argument("--net-interface", default="127.0.0.1",
                    help="net_interface: address for SDP/Contact ('lo' is not accepted)")
    ap.add_argument("--sip-listen", default="127.0.0.1:0",
                    help="sip_listen: local SIP address (an address of --net-interface's "
                         "network when the registrar is not on loopback)")
    ap.add_argument("--rtp-stats", action="store_true",
                    help="rtp_stats yes: report audio RTP packets sent/received in 'rtp'")
    ap.add_argument("--timeout", type=float, default=15)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds to stay in the call")
    ap.add_argument("--keep", action="store_true", help="keep the config dir and log")
    args = ap.parse_args()
    cfg_dir = tempfile.mkdtemp(prefix="baresip-")
    try:
        result = run(args, cfg_dir)
    finally:
        if not args.keep:
            shutil.rmtree(cfg_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)
    ok = result["registered"] and (not (args.dial or args.answer)
                                   or result["call"] == "established")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
