//! AMI framing, read exactly as Asterisk's `main/manager.c` reads it, so that the policy and
//! Asterisk can never see two different messages in the same bytes.
//!
//! Client side (`get_input` / `do_message`): a line ends at `\n`, one `\r` right before it is
//! dropped, a NUL ends the line's text (C strings), and an empty line ends the message. A line
//! that fills Asterisk's 1024-byte buffer without a newline is discarded except its last byte,
//! which starts the next line, and the message fails with "line too long"; lines past 128 are
//! dropped and the message fails with "too many lines". Both answers are Asterisk's own.
//!
//! Upstream side: Asterisk writes `\r\n` lines and a blank line after each message; the banner
//! is one line on its own.

use bytes::{Bytes, BytesMut};

/// Asterisk's `inbuf` holds 1025 bytes, of which `maxlen` = 1024 are used.
pub const MAX_LINE: usize = 1024;
/// The longest line that still fits Asterisk's buffer with the CRLF pbxguard forwards it with.
pub const MAX_FORWARD_LINE: usize = MAX_LINE - 2;
/// `AST_MAX_MANHEADERS`.
pub const MAX_HEADERS: usize = 128;
/// A message from Asterisk larger than this means the upstream is broken (or not Asterisk).
pub const MAX_UPSTREAM_MESSAGE: usize = 4 << 20;

/// One client message, as Asterisk would have stored it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The header lines, terminators and anything after a NUL removed; at most 128.
    pub lines: Vec<Vec<u8>>,
    /// A line overflowed the 1024-byte buffer: Asterisk refuses the whole message.
    pub line_too_long: bool,
    /// More than 128 lines arrived: Asterisk refuses the whole message.
    pub header_loss: bool,
}

/// The value of `line` for header `name`, as `__astman_get_header` matches it: the name,
/// case-insensitive, then `:` at once; leading bytes below 33 skipped, trailing ones kept.
pub fn header_value<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let n = name.len();
    if line.len() <= n || !line[..n].eq_ignore_ascii_case(name.as_bytes()) || line[n] != b':' {
        return None;
    }
    let rest = &line[n + 1..];
    let start = rest.iter().position(|&b| b >= 33).unwrap_or(rest.len());
    Some(&rest[start..])
}

impl Message {
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Message {
        Message {
            lines: pairs
                .iter()
                .map(|(k, v)| format!("{k}: {v}").into_bytes())
                .collect(),
            ..Message::default()
        }
    }

    /// First occurrence wins, as in Asterisk (`GET_HEADER_FIRST_MATCH`).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines.iter().find_map(|l| header_value(l, name))
    }

    /// Every occurrence (Asterisk collects all `Variable:` headers).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.lines.iter().filter_map(move |l| header_value(l, name))
    }

    /// The action Asterisk would run: the first non-empty `Action:` (`GET_HEADER_SKIP_EMPTY`).
    pub fn action(&self) -> Option<&[u8]> {
        self.all("Action").find(|v| !v.is_empty())
    }

    /// The `ActionID` Asterisk would echo (empty counts as none).
    pub fn action_id(&self) -> Option<&[u8]> {
        self.get("ActionID").filter(|v| !v.is_empty())
    }

    /// Index of the line that holds the effective `ActionID`.
    pub fn action_id_line(&self) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| header_value(l, "ActionID").is_some())
    }

    /// The lines in normal form (`\r\n` after each, a blank line after the message): what
    /// Asterisk gets is exactly what the policy read.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for line in &self.lines {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 2).sum::<usize>() + 2);
        self.write_to(&mut out);
        out
    }
}

/// Splits client bytes into messages the way `get_input` and `do_message` do.
#[derive(Debug, Default)]
pub struct ClientFramer {
    line: Vec<u8>,
    current: Message,
}

impl ClientFramer {
    /// Consumes `input`; complete messages are appended to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<Message>) {
        while !input.is_empty() {
            let nl = input.iter().position(|&b| b == b'\n');
            let mut seg = &input[..nl.unwrap_or(input.len())];
            input = &input[nl.map_or(input.len(), |n| n + 1)..];
            while self.line.len() + seg.len() >= MAX_LINE {
                // The buffer fills without a newline: Asterisk keeps only its last byte and
                // marks the message as broken.
                let take = MAX_LINE - self.line.len();
                let last = seg[take - 1];
                seg = &seg[take..];
                self.line.clear();
                self.line.push(last);
                self.current.line_too_long = true;
            }
            self.line.extend_from_slice(seg);
            if nl.is_some() {
                self.end_line(out);
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Message>) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if let Some(nul) = line.iter().position(|&b| b == 0) {
            line.truncate(nul);
        }
        if line.len() > MAX_FORWARD_LINE {
            // Asterisk accepts 1023 bytes before a bare LF, but the line is forwarded with
            // CRLF, which would overflow its buffer there and split the message in two, the
            // second half never judged. One byte stricter than Asterisk, with its answer.
            self.current.line_too_long = true;
        }
        if line.is_empty() {
            out.push(std::mem::take(&mut self.current));
        } else if self.current.lines.len() < MAX_HEADERS {
            self.current.lines.push(line);
        } else {
            self.current.header_loss = true;
        }
    }
}

/// A message from Asterisk: its bytes as received (blank line included) and where its lines
/// are, so that an event passes through without being copied or re-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub raw: Bytes,
    /// `(start, end)` of each line in `raw`, terminators excluded.
    spans: Vec<(u32, u32)>,
}

impl Reply {
    /// A message made of `lines` in Asterisk's own form (`\r\n` after each, a blank line).
    pub fn from_lines<L: AsRef<[u8]>>(lines: &[L]) -> Reply {
        let mut raw = Vec::new();
        let mut spans = Vec::with_capacity(lines.len());
        for line in lines {
            let start = raw.len() as u32;
            raw.extend_from_slice(line.as_ref());
            spans.push((start, raw.len() as u32));
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        Reply {
            raw: Bytes::from(raw),
            spans,
        }
    }

    pub fn lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(a, b)| &self.raw[a as usize..b as usize])
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines().find_map(|l| header_value(l, name))
    }

    pub fn is_event(&self) -> bool {
        self.lines()
            .next()
            .is_some_and(|l| header_value(l, "Event").is_some())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamFrameError {
    #[error("Asterisk sent a message larger than {MAX_UPSTREAM_MESSAGE} bytes")]
    TooLarge,
}

/// Bytes read from Asterisk at once (and kept free in the buffer before each read).
const READ_CHUNK: usize = 64 << 10;

/// Splits Asterisk's output into messages; blank lines between messages are skipped.
#[derive(Debug, Default)]
pub struct UpstreamFramer {
    buf: BytesMut,
    /// Where the current line starts; everything before it belongs to the current message.
    line_start: usize,
    spans: Vec<(u32, u32)>,
}

impl UpstreamFramer {
    /// Room to read into (at least 64 KiB free, so each read can take a large chunk).
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        &mut self.buf
    }

    /// Nothing buffered and no message begun.
    pub fn pending_is_empty(&self) -> bool {
        self.buf.is_empty() && self.spans.is_empty()
    }

    /// Takes one line (the banner) if a whole one is buffered before any message.
    pub fn line(&mut self) -> Option<Vec<u8>> {
        if !self.spans.is_empty() {
            return None;
        }
        let nl = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line = self.buf.split_to(nl + 1).to_vec();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.line_start = 0;
        Some(line)
    }

    /// Every complete message buffered so far.
    pub fn messages(&mut self, out: &mut Vec<Reply>) -> Result<(), UpstreamFrameError> {
        loop {
            let Some(rel) = self.buf[self.line_start..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_UPSTREAM_MESSAGE {
                    return Err(UpstreamFrameError::TooLarge);
                }
                return Ok(());
            };
            let nl = self.line_start + rel;
            let mut end = nl;
            if end > self.line_start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if end > self.line_start {
                if nl + 1 > MAX_UPSTREAM_MESSAGE {
                    return Err(UpstreamFrameError::TooLarge);
                }
                self.spans.push((self.line_start as u32, end as u32));
                self.line_start = nl + 1;
            } else if self.spans.is_empty() {
                // A blank line between messages.
                let _ = self.buf.split_to(nl + 1);
                self.line_start = 0;
            } else {
                let raw = self.buf.split_to(nl + 1).freeze();
                out.push(Reply {
                    raw,
                    spans: std::mem::take(&mut self.spans),
                });
                self.line_start = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Message> {
        let mut f = ClientFramer::default();
        let mut out = Vec::new();
        f.push(input, &mut out);
        out
    }

    #[test]
    fn crlf_bare_lf_and_pipelining() {
        let out = frames(b"Action: Ping\r\nActionID: 1\r\n\r\nAction: Ping\nActionID: 2\n\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].action_id(), Some(&b"1"[..]));
        assert_eq!(out[1].action_id(), Some(&b"2"[..]));
    }

    #[test]
    fn split_anywhere_gives_the_same_messages() {
        let input =
            b"Action: Originate\r\nChannel: PJSIP/1\r\nVariable: a=1\r\nVariable: b=2\r\n\r\n";
        let whole = frames(input);
        for cut in 0..input.len() {
            let mut f = ClientFramer::default();
            let mut out = Vec::new();
            f.push(&input[..cut], &mut out);
            f.push(&input[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn header_lookup_is_asterisks() {
        let m =
            frames(b"action:Ping\r\nActionID:\t  x \r\nAction : Originate\r\nACTIONID: y\r\n\r\n")
                .remove(0);
        assert_eq!(m.action(), Some(&b"Ping"[..]));
        // Leading blanks skipped, trailing kept; first occurrence wins.
        assert_eq!(m.action_id(), Some(&b"x "[..]));
        // `Action :` (space before the colon) is not the Action header for Asterisk.
        assert!(frames(b"Action : Originate\r\n\r\n")[0].action().is_none());
    }

    #[test]
    fn first_non_empty_action_wins() {
        let m = frames(b"Action:\r\nAction: Ping\r\nAction: Originate\r\n\r\n").remove(0);
        assert_eq!(m.action(), Some(&b"Ping"[..]));
    }

    #[test]
    fn nul_ends_the_line_and_a_leading_nul_ends_the_message() {
        let out = frames(b"Action: Ping\0Originate\r\n\0junk\r\nAction: Logoff\r\n\r\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].lines, vec![b"Action: Ping".to_vec()]);
        assert_eq!(out[1].action(), Some(&b"Logoff"[..]));
    }

    #[test]
    fn lone_cr_stays_in_the_line() {
        let m = frames(b"Action: Ping\rOriginate\r\r\n\r\n").remove(0);
        assert_eq!(m.action(), Some(&b"Ping\rOriginate\r"[..]));
    }

    #[test]
    fn line_limits_match_asterisk() {
        // 1022 bytes + CRLF (or LF) is the longest line accepted: it is forwarded with CRLF.
        let mut ok = b"Action: Ping\r\nX: ".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 1022 - 3));
        ok.extend_from_slice(b"\n\n");
        let m = frames(&ok).remove(0);
        assert!(!m.line_too_long);
        assert_eq!(m.lines[1].len(), 1022);

        // Asterisk would take 1023 bytes + LF, but forwarded with CRLF it would overflow there.
        let mut edge = b"Action: Ping\r\nX: ".to_vec();
        edge.extend(std::iter::repeat_n(b'a', 1023 - 3));
        edge.extend_from_slice(b"\nAction: Originate\n\n");
        let out = frames(&edge);
        assert_eq!(out.len(), 1);
        assert!(out[0].line_too_long);

        // 1023 bytes + CRLF: the kept CR and the LF make an empty line, ending the message.
        let mut long = b"Action: Ping\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1020));
        long.extend_from_slice(b"\r\nAction: Logoff\r\n\r\n");
        let out = frames(&long);
        assert_eq!(out.len(), 2);
        assert!(out[0].line_too_long);
        assert_eq!(out[1].action(), Some(&b"Logoff"[..]));

        // The buffer's last byte starts the next line, so the tail of an overlong line becomes
        // a header: the message must be refused as a whole, as Asterisk does.
        let mut smuggle = vec![b'a'; MAX_LINE - 1];
        smuggle.extend_from_slice(b"Action: Originate\r\n\r\n");
        let m = frames(&smuggle).remove(0);
        assert!(m.line_too_long);
        assert_eq!(m.action(), Some(&b"Originate"[..]));
    }

    /// `get_input` one byte at a time, as plainly as possible.
    fn reference(input: &[u8]) -> Vec<Message> {
        let (mut out, mut line, mut cur) = (Vec::new(), Vec::new(), Message::default());
        for &b in input {
            if b != b'\n' {
                line.push(b);
                if line.len() == MAX_LINE {
                    line = vec![line[MAX_LINE - 1]];
                    cur.line_too_long = true;
                }
                continue;
            }
            let mut l = std::mem::take(&mut line);
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            if let Some(n) = l.iter().position(|&c| c == 0) {
                l.truncate(n);
            }
            if l.len() > MAX_FORWARD_LINE {
                cur.line_too_long = true;
            }
            if l.is_empty() {
                out.push(std::mem::take(&mut cur));
            } else if cur.lines.len() < MAX_HEADERS {
                cur.lines.push(l);
            } else {
                cur.header_loss = true;
            }
        }
        out
    }

    #[test]
    fn matches_the_byte_at_a_time_reference_on_random_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..300 {
            let len = rng.gen_range(0..6000);
            // Mostly letters; short lines in half the rounds, lines past 1024 bytes in the
            // other half; CRs and NULs often enough to matter.
            let line_len = if round % 2 == 0 { 25 } else { 1500 };
            let input: Vec<u8> = (0..len)
                .map(|_| match rng.gen_range(0..line_len * 4) {
                    0..=3 => b'\n',
                    4..=5 => b'\r',
                    6 => 0,
                    _ => b'a' + rng.gen_range(0..26),
                })
                .collect();
            let mut f = ClientFramer::default();
            let mut got = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(2000));
                f.push(&rest[..n], &mut got);
                rest = &rest[n..];
            }
            assert_eq!(got, reference(&input));
            // What is forwarded reads back to the same message in Asterisk's framing: no
            // message can split in two on the way.
            for m in got
                .iter()
                .filter(|m| !m.line_too_long && !m.header_loss && !m.lines.is_empty())
            {
                let again = reference(&m.to_bytes());
                assert_eq!(again, vec![m.clone()]);
            }
        }
    }

    #[test]
    fn more_than_128_headers_are_dropped_and_flagged() {
        let mut input = Vec::new();
        for i in 0..500 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let m = frames(&input).remove(0);
        assert_eq!(m.lines.len(), MAX_HEADERS);
        assert!(m.header_loss);
    }

    #[test]
    fn upstream_messages_and_banner() {
        let mut f = UpstreamFramer::default();
        f.buffer().extend_from_slice(
            b"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\nEvent: FullyBooted\r\nPrivilege: system,all\r\n\r\nEvent: Partial",
        );
        assert_eq!(
            f.line().as_deref(),
            Some(&b"Asterisk Call Manager/9.0.0"[..])
        );
        let mut out = Vec::new();
        f.messages(&mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[1].is_event());
        f.buffer().extend_from_slice(b"\r\n\r\n");
        out.clear();
        f.messages(&mut out).unwrap();
        assert_eq!(
            out[0].lines().collect::<Vec<_>>(),
            vec![&b"Event: Partial"[..]]
        );
        // The raw bytes are Asterisk's, blank line included.
        assert_eq!(&out[0].raw[..], &b"Event: Partial\r\n\r\n"[..]);
    }

    #[test]
    fn upstream_split_anywhere_gives_the_same_messages() {
        let input =
            b"\r\nResponse: Success\r\nActionID: 1\r\n\r\nEvent: X\nPrivilege: call,all\n\n";
        let mut whole = UpstreamFramer::default();
        whole.buffer().extend_from_slice(input);
        let mut expected = Vec::new();
        whole.messages(&mut expected).unwrap();
        assert_eq!(expected.len(), 2);
        for step in 1..input.len() {
            let mut f = UpstreamFramer::default();
            let mut got = Vec::new();
            for chunk in input.chunks(step) {
                f.buffer().extend_from_slice(chunk);
                f.messages(&mut got).unwrap();
            }
            assert_eq!(got, expected, "step {step}");
        }
    }

    #[test]
    fn oversized_upstream_message_is_an_error() {
        let mut f = UpstreamFramer::default();
        f.buffer()
            .extend_from_slice(&vec![b'a'; MAX_UPSTREAM_MESSAGE + 1]);
        assert_eq!(
            f.messages(&mut Vec::new()),
            Err(UpstreamFrameError::TooLarge)
        );
    }
}
