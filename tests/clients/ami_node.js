// Logs in through the AMI gateway with the Node `asterisk-manager` library, runs actions and
// checks the answers. Usage: node ami_node.js PORT USER SECRET
'use strict';
const AsteriskManager = require('asterisk-manager');

const [port, user, secret] = process.argv.slice(2);
const fail = (why) => { console.error('FAIL', why); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();

const ami = new AsteriskManager(Number(port), '127.0.0.1', user, secret, true);
ami.on('error', (e) => fail(e));
const action = (req) => new Promise((resolve) => {
  ami.action(req, (err, res) => resolve(err || res));
});

ami.once('connect', async () => {
  // The library logs in on connect and holds actions until the login answer arrives.
  const ping = await action({ action: 'ping' });
  if (ping.ping !== 'Pong') fail(`ping: ${JSON.stringify(ping)}`);
  const refused = await action({ action: 'originate', channel: 'Local/1@x', application: 'System', data: 'id' });
  if (refused.response !== 'Error' || !/not allowed/.test(refused.message)) fail(`refusal: ${JSON.stringify(refused)}`);
  const status = await action({ action: 'status' });
  if (status.response !== 'Success') fail(`status: ${JSON.stringify(status)}`);
  ami.disconnect();
  console.log('ok');
  process.exit(0);
});
