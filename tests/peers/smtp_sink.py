#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd): stores every message it accepts as a file.

    smtp_sink.py PORT OUTDIR [CERT KEY]

With CERT and KEY it offers STARTTLS and refuses mail before it. Each message is written to
OUTDIR/<ns>.eml with a first line `X-Test-TLS: yes|no` telling whether the session was
encrypted. Prints `ready` once listening; stops on SIGTERM.
"""
import os
import signal
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, outdir):
        self.outdir = outdir

    async def handle_DATA(self, server, session, envelope):
        tls = "yes" if session.ssl is not None else "no"
        name = os.path.join(self.outdir, f"{time.time_ns()}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(f"X-Test-TLS: {tls}\r\n".encode())
            f.write(f"X-Test-Rcpt: {','.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(envelope.content)
        os.rename(name + ".tmp", name)
        return "250 OK"


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    kwargs = {}
    if len(sys.argv) >= 5:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        kwargs = {"tls_context": ctx, "require_starttls": True}
    controller = Controller(Sink(outdir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
