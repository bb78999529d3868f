// Logs in through the AMI gateway with the Node `asterisk-ami-client` library (promise-style
// actions, its own login and event parser), runs actions and checks the answers.
// Usage: node ami_ami_client.js PORT USER SECRET
'use strict';
const AmiClient = require('asterisk-ami-client');

const [port, user, secret] = process.argv.slice(2);
const fail = (why) => { console.error('FAIL', why); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();

(async () => {
  const client = new AmiClient({ reconnect: false, keepAlive: false });
  client.on('internalError', (e) => fail(`internal: ${e}`));
  await client.connect(user, secret, { host: '127.0.0.1', port: Number(port) });
  const ping = await client.action({ Action: 'Ping' }, true);
  if (ping.Response !== 'Success' || ping.Ping !== 'Pong') fail(`ping: ${JSON.stringify(ping)}`);
  const settings = await client.action({ Action: 'CoreSettings' }, true);
  if (settings.Response !== 'Success' || !settings.AsteriskVersion) fail(`settings: ${JSON.stringify(settings)}`);
  const refused = await client.action(
    { Action: 'Originate', Channel: 'Local/1@x', Application: 'System', Data: 'id' }, true);
  if (refused.Response !== 'Error' || !/not allowed/.test(refused.Message)) fail(`refusal: ${JSON.stringify(refused)}`);
  client.disconnect();
  console.log('ok', settings.AsteriskVersion);
  process.exit(0);
})().catch((e) => fail(e && e.stack || e));
