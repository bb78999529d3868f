"""Logs in through the AMI gateway with panoramisk (Debian's python3-panoramisk), runs a few
actions and checks the answers. Usage: ami_panoramisk.py PORT USER SECRET plain|md5"""
import asyncio
import hashlib
import sys

from panoramisk import Manager


async def main(port, user, secret, auth):
    if auth == "plain":
        # panoramisk's own login: Login with Username/Secret as soon as it connects.
        manager = Manager(host="127.0.0.1", port=port, username=user, secret=secret,
                          ping_delay=60, reconnect_timeout=0.5)
        await asyncio.wait_for(manager.connect(), 10)
        for _ in range(100):
            if manager.authenticated:
                break
            await asyncio.sleep(0.05)
        assert manager.authenticated, "plain login failed"
    else:
        # panoramisk has no MD5 login of its own: Challenge, then Login with the key.
        manager = Manager(host="127.0.0.1", port=port, ping_delay=60, reconnect_timeout=0.5)
        await asyncio.wait_for(manager.connect(), 10)
        challenge = await asyncio.wait_for(
            manager.send_action({"Action": "Challenge", "AuthType": "MD5"}), 10)
        key = hashlib.md5((challenge.Challenge + secret).encode()).hexdigest()
        login = await asyncio.wait_for(manager.send_action(
            {"Action": "Login", "AuthType": "MD5", "Username": user, "Key": key}), 10)
        assert login.Message == "Authentication accepted", login
    ping = await asyncio.wait_for(manager.send_action({"Action": "Ping"}), 10)
    assert ping.Ping == "Pong", ping
    channels = await asyncio.wait_for(manager.send_action({"Action": "CoreShowChannels"}), 10)
    assert isinstance(channels, list) and channels[-1].EventList == "Complete", channels
    refused = await asyncio.wait_for(manager.send_action(
        {"Action": "Originate", "Channel": "Local/1@x", "Application": "System", "Data": "id"}), 10)
    assert refused.Response == "Error" and "not allowed" in refused.Message, refused
    command = await asyncio.wait_for(manager.send_command("core show version"), 10)
    assert command.Response == "Success", command
    manager.close()
    print("ok", auth)


if __name__ == "__main__":
    port, user, secret, auth = sys.argv[1:5]
    asyncio.run(main(int(port), user, secret, auth))
