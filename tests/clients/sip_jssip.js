// One JsSIP 3.x session over secure WebSocket (RFC 7118) through the SIP edge: connect,
// REGISTER (digest), optionally send a MESSAGE, print one JSON line, exit.
//
//   node sip_jssip.js --url wss://localhost:PORT/ws?ticket=T --origin ORIGIN --ca CERTFILE
//                     --user 1001 --domain pbx.test [--password PW]
//                     [--message-to 1002] [--as 1002] [--timeout 10] [--reregister N]
//                     [--call 600 [--hold 1] [--cancel-after MS]] [--stay S]
//
// --as registers (and sends) as another extension than --user. --reregister N unregisters and
// registers again N times once registered. --call calls that extension after
// registering (and after the MESSAGE, if any), stays --hold seconds once confirmed and hangs
// up; with --cancel-after it cancels the call that long after the first provisional answer
// instead. --stay keeps it registered S seconds (without --call), letting calls to it ring.
// Result:
//   {"connected": bool, "connect_error": str|null, "registered": bool,
//    "register_code": int|null, "register_cause": str|null,
//    "message_code": int|null, "message_cause": str|null,
//    "reregistered": int (registrations again after --reregister's unregisters),
//    "call": "confirmed"|"failed"|null, "call_code": int|null, "call_cause": str|null,
//    "ended_by": "local"|"remote"|null, "answer": [m=/c=/a=fingerprint/setup/candidate/ice
//    lines of the SDP answer], "media_packets_in": datagrams received on the offer's port}
// Exit status 0 when everything asked for succeeded, else 1.
//
// Node has no WebRTC, so for --call a signalling-only RTCPeerConnection stands in for the
// browser's: its offer is shaped like Chrome's (UDP/TLS/RTP/SAVPF, a=fingerprint,
// a=setup:actpass, ICE credentials, one host candidate on a loopback UDP socket it binds), and
// it accepts any answer. No DTLS handshake and no media: what is proven is the signalling
// (JsSIP's INVITE, the answer it gets, ACK and BYE); packets Asterisk sends to the candidate
// (STUN checks, DTLS) are only counted.
//
// Node 20 has no global WebSocket: JsSIP's WebSocketInterface calls `new WebSocket(url, 'sip')`,
// so a subclass of the `ws` package stands in for the browser's, adding what a browser would
// send (Origin) and the test's trust root (the daemon's self-signed certificate).
'use strict';
const crypto = require('crypto');
const dgram = require('dgram');
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
  for (const need of ['url', 'origin', 'ca', 'user', 'domain']) {
    if (!out[need]) {
      console.error(`--${need} is required`);
      process.exit(2);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const ext = args.as || args.user;
// No password by default: behind pbxguard's edge a ticket-bound browser never holds one (the
// edge answers Asterisk's challenges); --password makes JsSIP try its own digest anyway.
const password = args.as && args.as !== args.user ? args['as-password'] : args.password;
const result = {
  connected: false,
  connect_error: null,
  registered: false,
  register_code: null,
  reregistered: 0,
  register_cause: null,
  message_code: null,
  message_cause: null,
  call: null,
  call_code: null,
  call_cause: null,
  ended_by: null,
  answer: [],
  media_packets_in: 0,
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

// The UDP socket behind the offer's one host candidate (loopback only).
const media = dgram.createSocket('udp4');
media.on('message', () => { result.media_packets_in += 1; });

function offerSdp(port) {
  const hex = (n) => crypto.randomBytes(n).toString('hex');
  const fingerprint = crypto.randomBytes(32).toString('hex').toUpperCase().match(/../g).join(':');
  return [
    'v=0', `o=- ${parseInt(hex(6), 16)} 2 IN IP4 127.0.0.1`, 's=-', 't=0 0',
    'a=group:BUNDLE 0', 'a=msid-semantic: WMS',
    `m=audio ${port} UDP/TLS/RTP/SAVPF 111 0 101`, 'c=IN IP4 127.0.0.1',
    `a=rtcp:${port} IN IP4 127.0.0.1`,
    `a=candidate:1 1 udp 2130706431 127.0.0.1 ${port} typ host generation 0`,
    `a=ice-ufrag:${hex(2)}`, `a=ice-pwd:${hex(12)}`, 'a=ice-options:trickle',
    `a=fingerprint:sha-256 ${fingerprint}`, 'a=setup:actpass', 'a=mid:0', 'a=sendrecv',
    'a=rtcp-mux', 'a=rtpmap:111 opus/48000/2', 'a=fmtp:111 minptime=10;useinbandfec=1',
    'a=rtpmap:0 PCMU/8000', 'a=rtpmap:101 telephone-event/8000', '',
  ].join('\r\n');
}

class SignallingOnlyPeerConnection extends EventTarget {
  constructor() {
    super();
    this.signalingState = 'stable';
    this.iceGatheringState = 'new';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this.localDescription = null;
    this.remoteDescription = null;
  }
  async createOffer() { return { type: 'offer', sdp: offerSdp(media.address().port) }; }
  async createAnswer() { throw new Error('this stand-in only makes offers'); }
  async setLocalDescription(desc) {
    this.localDescription = desc;
    this.signalingState = desc.type === 'offer' ? 'have-local-offer' : 'stable';
    this.iceGatheringState = 'complete';
  }
  async setRemoteDescription(desc) {
    this.remoteDescription = desc;
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable';
  }
  addTrack() {}
  getSenders() { return []; }
  getReceivers() { return []; }
  getLocalStreams() { return []; }
  getRemoteStreams() { return []; }
  close() { this.signalingState = 'closed'; }
}
if ((args.call || args.stay) && typeof global.RTCPeerConnection === 'undefined') {
  global.window = global;
  global.RTCPeerConnection = SignallingOnlyPeerConnection;
  global.RTCSessionDescription = class {
    constructor(init) { this.type = init.type; this.sdp = init.sdp; }
  };
}

function call(done) {
  const session = ua.call(`sip:${args.call}@${args.domain}`, {
    mediaConstraints: { audio: false, video: false },
    rtcOfferConstraints: { offerToReceiveAudio: true },
  });
  session.on('sdp', (e) => {
    if (e.originator === 'remote') {
      result.answer = e.sdp.split(/\r?\n/).filter((l) =>
        /^(m=|c=|a=(fingerprint|setup|candidate|ice-ufrag|ice-pwd|rtcp-mux|crypto))/.test(l));
    }
  });
  session.on('progress', (e) => {
    if (e.response) result.call_code = e.response.status_code;
    if (args['cancel-after'] && !session.isEnded()) {
      setTimeout(() => { if (!session.isEnded()) session.terminate(); },
        Number(args['cancel-after']));
    }
  });
  session.on('accepted', (e) => { if (e.response) result.call_code = e.response.status_code; });
  session.on('confirmed', () => {
    result.call = 'confirmed';
    setTimeout(() => { if (!session.isEnded()) session.terminate(); },
      Number(args.hold || '1') * 1000);
  });
  session.on('failed', (e) => {
    result.call = 'failed';
    result.call_cause = e.cause || null;
    if (e.message && e.message.status_code) result.call_code = e.message.status_code;
    // A cancel asked for is a success.
    done(Boolean(args['cancel-after']) && e.cause === JsSIP.C.causes.CANCELED);
  });
  session.on('ended', (e) => {
    result.ended_by = e.originator;
    result.call_cause = e.cause || null;
    done(true);
  });
}

// After registering: the MESSAGE, then the call, as asked.
function afterRegister(ok) {
  stopping = !ok || !args.call;
  if (ok && args.stay && !args.call) {
    // Registered and reachable: calls to it ring (JsSIP answers 180) and are never answered.
    setTimeout(() => { ua.stop(); setTimeout(() => finish(true), 500); },
      Number(args.stay) * 1000);
    return;
  }
  if (!ok || !args.call) {
    ua.stop();
    finish(ok);
    return;
  }
  media.bind(0, '127.0.0.1', () => call((callOk) => {
    // Let the BYE's answer and the unREGISTER go out before leaving.
    ua.stop();
    setTimeout(() => finish(callOk), 500);
  }));
}

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
// JsSIP answers 405 to INVITEs nobody listens for; a listener lets them ring.
ua.on('newRTCSession', (e) => {
  if (e.originator === 'remote') result.incoming = (result.incoming || 0) + 1;
});
ua.on('disconnected', () => {
  if (!result.connected || !result.registered) finish(false);
});
ua.on('registrationFailed', (e) => {
  result.register_code = e.response ? e.response.status_code : null;
  result.register_cause = e.cause || null;
  ua.stop();
  finish(false);
});
// JsSIP reports a refresh's success to nobody, so a "re-register" is an unregister and a
// register: both REGISTERs on the UA's Call-ID with rising CSeq, each challenged.
let reregisters = Number(args.reregister || '0');
ua.on('unregistered', () => {
  if (result.registered && reregisters >= 0 && !stopping) ua.register();
});
let stopping = false;
ua.on('registered', (e) => {
  if (result.registered) {
    result.reregistered += 1;
  } else {
    result.registered = true;
    result.register_code = e.response.status_code;
  }
  if (reregisters > 0) {
    reregisters -= 1;
    ua.unregister();
    return;
  }
  reregisters = -1;
  afterRegisterAndMessage();
});

function afterRegisterAndMessage() {
  if (!args['message-to']) {
    afterRegister(true);
    return;
  }
  ua.sendMessage(`sip:${args['message-to']}@${args.domain}`, 'hello from JsSIP', {
    eventHandlers: {
      succeeded: (m) => {
        result.message_code = m.response.status_code;
        afterRegister(true);
      },
      failed: (m) => {
        result.message_code = m.response ? m.response.status_code : null;
        result.message_cause = m.cause || null;
        afterRegister(false);
      },
    },
  });
}
ua.start();
