// One JsSIP 3.x session over secure WebSocket (RFC 7118) through the SIP edge: connect,
// REGISTER (digest), optionally send a MESSAGE, print one JSON line, exit.
//
//   node sip_jssip.js --url wss://localhost:PORT/ws?ticket=T --origin ORIGIN --ca CERTFILE
//                     --user 1001 --password pw1001 --domain pbx.test
//                     [--message-to 1002] [--as 1002] [--timeout 10]
//
// --as registers (and sends) as another extension than --user (its password then defaults to
// "pw" + that extension). Result:
//   {"connected": bool, "connect_error": str|null, "registered": bool,
//    "register_code": int|null, "register_cause": str|null,
//    "message_code": int|null, "message_cause": str|null}
// Exit status 0 when everything asked for succeeded, else 1.
//
// Node 20 has no global WebSocket: JsSIP's WebSocketInterface calls `new WebSocket(url, 'sip')`,
// so a subclass of the `ws` package stands in for the browser's, adding what a browser would
// send (Origin) and the test's trust root (the daemon's self-signed certificate).
'use strict';
const fs = require('fs');
const JsSIP = require('jssip');
const NodeWebSocket = require('ws');

function parseArgs(argv) {
  const out = { timeout: '10' };
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      console.error(`bad argument: ${argv[i]}`);
      process.exit(2);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const need of ['url', 'origin', 'ca', 'user', 'password', 'domain']) {
    if (!out[need]) {
      console.error(`--${need} is required`);
      process.exit(2);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const ext = args.as || args.user;
const password = args.as && args.as !== args.user ? (args['as-password'] || `pw${args.as}`) : args.password;
const result = {
  connected: false,
  connect_error: null,
  registered: false,
  register_code: null,
  register_cause: null,
  message_code: null,
  message_cause: null,
};

function finish(ok) {
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
}

const ca = fs.readFileSync(args.ca);
class BrowserLikeWebSocket extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols, { origin: args.origin, ca });
    // ws reports a refused upgrade as an error "Unexpected server response: 401".
    this.on('error', (e) => { result.connect_error = e.message; });
  }
}
global.WebSocket = BrowserLikeWebSocket;

setTimeout(() => finish(false), Number(args.timeout) * 1000).unref();

const socket = new JsSIP.WebSocketInterface(args.url);
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: `sip:${ext}@${args.domain}`,
  password,
  register: true,
  register_expires: 600,
  user_agent: 'JsSIP pbxguard-tests',
  // One attempt only: a refused connection must not be retried for ever.
  connection_recovery_min_interval: 60,
  connection_recovery_max_interval: 60,
});

ua.on('connected', () => { result.connected = true; });
ua.on('disconnected', () => {
  if (!result.connected || !result.registered) finish(false);
});
ua.on('registrationFailed', (e) => {
  result.register_code = e.response ? e.response.status_code : null;
  result.register_cause = e.cause || null;
  ua.stop();
  finish(false);
});
ua.on('registered', (e) => {
  result.registered = true;
  result.register_code = e.response.status_code;
  if (!args['message-to']) {
    ua.stop();
    finish(true);
    return;
  }
  ua.sendMessage(`sip:${args['message-to']}@${args.domain}`, 'hello from JsSIP', {
    eventHandlers: {
      succeeded: (m) => {
        result.message_code = m.response.status_code;
        ua.stop();
        finish(true);
      },
      failed: (m) => {
        result.message_code = m.response ? m.response.status_code : null;
        result.message_cause = m.cause || null;
        ua.stop();
        finish(false);
      },
    },
  });
});
ua.start();
