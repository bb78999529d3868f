"""An AMI client confined to the dialplan context `sales`, through the gateway with panoramisk
(Debian's python3-panoramisk): originates in `sales` (Asterisk answers), is refused in `default`,
via `Local/x@default` and to a denied prefix, and runs into its per-minute limit of 3.
Usage: ami_contexts.py PORT USER SECRET"""
import asyncio
import sys

from panoramisk import Manager


def originate(channel, context, exten, asynchronous):
    return {"Action": "Originate", "Channel": channel, "Context": context, "Exten": exten,
            "Priority": "1", "Async": "true" if asynchronous else "false", "Timeout": "10000"}


def refused(answer, rule):
    msg = getattr(answer, "Message", "") or ""
    assert answer.Response == "Error" and f"({rule})" in msg, (rule, answer)


async def main(port, user, secret):
    manager = Manager(host="127.0.0.1", port=port, username=user, secret=secret,
                      ping_delay=60, reconnect_timeout=0.5)
    await asyncio.wait_for(manager.connect(), 10)
    for _ in range(100):
        if manager.authenticated:
            break
        await asyncio.sleep(0.05)
    assert manager.authenticated, "login failed"

    async def send(action):
        return await asyncio.wait_for(manager.send_action(action), 20)

    # 1: in its context; a synchronous Originate answers once Asterisk has placed the call.
    ok = await send(originate("Local/100@sales", "sales", "100", False))
    assert ok.Response == "Success", ok
    # Refused, and not counted: another context, a Local channel into another one, a denied
    # prefix (in Exten and in the channel).
    refused(await send(originate("Local/100@sales", "default", "100", False)), "context")
    refused(await send(originate("Local/x@default", "sales", "100", False)), "context")
    refused(await send(originate("Local/100@sales", "sales", "0088212345", False)),
            "deny_prefix")
    refused(await send(originate("Local/0088212345@sales", "sales", "100", False)),
            "deny_prefix")
    # 2 and 3: asynchronous; panoramisk waits for the OriginateResponse with its ActionID.
    for _ in range(2):
        answers = await send(originate("Local/100@sales", "sales", "100", True))
        assert isinstance(answers, list), answers
        assert answers[0].Response == "Success", answers
        event = answers[-1]
        assert event.Event == "OriginateResponse" and event.Response == "Success", answers
    # 4: over the client's three per minute.
    refused(await send(originate("Local/100@sales", "sales", "100", False)),
            "max_call_attempts_per_minute")
    ping = await send({"Action": "Ping"})
    assert ping.Ping == "Pong", ping
    manager.close()
    print("ok")


if __name__ == "__main__":
    port, user, secret = sys.argv[1:4]
    asyncio.run(main(int(port), user, secret))
