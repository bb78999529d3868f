//! Message framing on TLS/TCP byte streams (RFC 3261 §18.3). WebSocket carries one message
//! per WebSocket message (RFC 7118) and does not use this.
//!
//! On a stream, Content-Length is the only thing that says where a message ends, so the
//! framer is as strict about it as [`Message::parse`](super::message::Message::parse): it must
//! be present exactly once (long or compact form), digits only, on a line that every reader
//! reads the same way. Anything else could let two readers split the stream differently
//! (request smuggling), so it is fatal for the stream. Line-level problems elsewhere in the
//! header block (folding, bad names...) are left to `Message::parse`, which answers 400 while
//! the stream goes on: the message boundary is unambiguous there.
//!
//! The framer uses message.rs's helpers for what a line and a header name are, so the two
//! cannot disagree.

use bytes::{Buf, Bytes, BytesMut};

use super::message::{
    check_line_structure, classify_line, header_block_end, resolve_name, split_lines, Line,
    ParseError, MAX_HEADER_BYTES, MAX_MESSAGE_BYTES,
};

/// Bytes buffered at most. A reader pushes what it read and then drains with
/// [`StreamFramer::next`]; more than this means the peer outruns us or never completes a
/// message.
const MAX_BUFFERED: usize = 4 * MAX_MESSAGE_BYTES;

/// What the stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A `\r\n\r\n` keep-alive ping (RFC 5626 §3.5.1): answer with a `\r\n` pong.
    Ping,
    /// One complete message (header block and exactly Content-Length body bytes), for
    /// [`Message::parse`](super::message::Message::parse).
    Message(Bytes),
}

/// Why a stream cannot go on. The caller answers if it can (see [`FrameError::status`] and
/// [`StreamFramer::buffered`]) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header block larger than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge,
    #[error("bare CR or LF, or NUL, in the header block")]
    LineStructure,
    #[error("missing Content-Length")]
    MissingContentLength,
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    BodyTooLarge,
    #[error("more than {MAX_BUFFERED} bytes buffered")]
    Overflow,
}

impl FrameError {
    /// The parse error this corresponds to, for [`error_response`](super::message::error_response).
    pub fn to_parse_error(&self) -> ParseError {
        match self {
            FrameError::HeaderTooLarge | FrameError::Overflow => ParseError::HeadersTooLarge,
            FrameError::LineStructure => ParseError::LineEnding,
            FrameError::MissingContentLength => ParseError::Missing("Content-Length"),
            FrameError::DuplicateContentLength => ParseError::Duplicate("Content-Length"),
            FrameError::InvalidContentLength => ParseError::Invalid("Content-Length"),
            FrameError::BodyTooLarge => ParseError::TooLarge,
        }
    }

    /// The status to answer with before closing.
    pub fn status(&self) -> (u16, &'static str) {
        self.to_parse_error().status()
    }
}

/// Splits a TLS/TCP byte stream into messages and keep-alive pings.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: BytesMut,
    failed: Option<FrameError>,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the socket. After an error, or past [`MAX_BUFFERED`], bytes are
    /// dropped (and `next` reports the error).
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.buf.len() + data.len() > MAX_BUFFERED {
            self.failed = Some(FrameError::Overflow);
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The bytes not yet framed (e.g. to try [`error_response`](super::message::error_response)
    /// after an error).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next ping or message; `Ok(None)` when more bytes are needed; `Err` when the stream
    /// is unrecoverable (the same error on every later call).
    // Not an Iterator: the caller must tell "need more bytes" from "stream over".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.next_inner();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        // Between messages: "\r\n\r\n" is a ping; a lone "\r\n" before a start line is
        // ignored (RFC 3261 §7.5).
        while self.buf.starts_with(b"\r") {
            if self.buf.len() < 4 {
                return match &self.buf[..] {
                    b"\r" | b"\r\n" | b"\r\n\r" => Ok(None),
                    b if b.starts_with(b"\r\n") => {
                        self.buf.advance(2);
                        continue;
                    }
                    _ => Err(FrameError::LineStructure),
                };
            }
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(Frame::Ping));
            }
            if !self.buf.starts_with(b"\r\n") {
                return Err(FrameError::LineStructure);
            }
            self.buf.advance(2);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let scan = &self.buf[..self.buf.len().min(MAX_HEADER_BYTES)];
        let Some(hdr_end) = header_block_end(scan) else {
            check_line_structure(scan, true).map_err(|_| FrameError::LineStructure)?;
            if self.buf.len() >= MAX_HEADER_BYTES {
                return Err(FrameError::HeaderTooLarge);
            }
            return Ok(None);
        };
        let block = &self.buf[..hdr_end - 4];
        check_line_structure(block, false).map_err(|_| FrameError::LineStructure)?;
        let body_len = content_length(block)?;
        let total = hdr_end + body_len;
        if total > MAX_MESSAGE_BYTES {
            return Err(FrameError::BodyTooLarge);
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// The one Content-Length of a header block (without its final CRLFCRLF).
fn content_length(block: &[u8]) -> Result<usize, FrameError> {
    let mut found = None;
    let mut prev_was_cl = false;
    for line in split_lines(block).skip(1) {
        let (name, spaced, value) = match classify_line(line) {
            // A folded continuation of Content-Length would change its value for a reader
            // that unfolds.
            Line::Continuation if prev_was_cl => return Err(FrameError::InvalidContentLength),
            Line::Continuation | Line::NoColon => {
                prev_was_cl = false;
                continue;
            }
            Line::Header {
                name,
                spaced,
                value,
            } => (name, spaced, value),
        };
        let resolved = std::str::from_utf8(name).ok().and_then(resolve_name);
        prev_was_cl = resolved.is_some_and(|n| n.as_str() == "Content-Length");
        if !prev_was_cl {
            continue;
        }
        // "Content-Length : 5" is Content-Length to pjsip; we refuse rather than guess.
        if spaced {
            return Err(FrameError::InvalidContentLength);
        }
        if found.is_some() {
            return Err(FrameError::DuplicateContentLength);
        }
        found = Some(parse_length(value)?);
    }
    found.ok_or(FrameError::MissingContentLength)
}

fn parse_length(value: &[u8]) -> Result<usize, FrameError> {
    let v = value
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .map_or(&value[value.len()..], |i| &value[i..]);
    let end = v.len()
        - v.iter()
            .rev()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
    let v = &v[..end];
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::InvalidContentLength);
    }
    let n = v.iter().fold(0usize, |acc, &d| {
        acc.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    if n > MAX_MESSAGE_BYTES {
        return Err(FrameError::BodyTooLarge);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Message;

    const OPTIONS: &str = "OPTIONS sip:a@example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS h.example.com;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
To: <sip:a@example.com>\r\n\
From: <sip:b@example.com>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Type: text/plain\r\n\
Content-Length: 5\r\n\
\r\n\
hello";

    fn framer(data: &[u8]) -> StreamFramer {
        let mut f = StreamFramer::new();
        f.push(data);
        f
    }

    fn message(f: &mut StreamFramer) -> Bytes {
        match f.next() {
            Ok(Some(Frame::Message(b))) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_messages_back_to_back() {
        let mut f = framer(format!("{OPTIONS}{OPTIONS}").as_bytes());
        assert_eq!(message(&mut f), OPTIONS.as_bytes());
        assert_eq!(message(&mut f), OPTIONS.as_bytes());
        assert_eq!(f.next(), Ok(None));
        assert!(Message::parse(OPTIONS.as_bytes()).is_ok());
    }

    #[test]
    fn frames_byte_by_byte() {
        let mut f = StreamFramer::new();
        let mut got = Vec::new();
        for b in OPTIONS.as_bytes().iter().chain(b"\r\n\r\n") {
            f.push(&[*b]);
            while let Some(frame) = f.next().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![Frame::Message(Bytes::from(OPTIONS)), Frame::Ping]);
    }

    #[test]
    fn keepalives() {
        let mut f = framer(b"\r\n\r\n\r\n\r\n");
        assert_eq!(f.next(), Ok(Some(Frame::Ping)));
        assert_eq!(f.next(), Ok(Some(Frame::Ping)));
        assert_eq!(f.next(), Ok(None));
        // A lone CRLF before a message is skipped.
        let mut f = framer(format!("\r\n{OPTIONS}").as_bytes());
        assert_eq!(message(&mut f), OPTIONS.as_bytes());
        let mut f = framer(b"\r\n");
        assert_eq!(f.next(), Ok(None));
        f.push(b"\r\n");
        assert_eq!(f.next(), Ok(Some(Frame::Ping)));
        let mut f = framer(b"\rX");
        assert_eq!(f.next(), Err(FrameError::LineStructure));
        let mut f = framer(b"\r\n\rX");
        assert_eq!(f.next(), Err(FrameError::LineStructure));
    }

    #[test]
    fn compact_and_case_insensitive_content_length() {
        for name in ["l", "L", "content-length", "CONTENT-LENGTH"] {
            let raw = OPTIONS.replace("Content-Length", name);
            let mut f = framer(raw.as_bytes());
            assert_eq!(message(&mut f), raw.as_bytes(), "{name}");
        }
        let raw = OPTIONS.replace("Content-Length: 5", "Content-Length:5");
        assert_eq!(message(&mut framer(raw.as_bytes())), raw.as_bytes());
    }

    #[test]
    fn content_length_errors_are_fatal() {
        for (from, to, e) in [
            ("Content-Length: 5", "", FrameError::MissingContentLength),
            (
                "Content-Length: 5",
                "Content-Length: 5\r\nl: 5",
                FrameError::DuplicateContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 5\r\nContent-Length: 5",
                FrameError::DuplicateContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: -5",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 5 5",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 0x5",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length:",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length : 5",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "l\t: 5",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 5\r\n 0",
                FrameError::InvalidContentLength,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 99999",
                FrameError::BodyTooLarge,
            ),
            (
                "Content-Length: 5",
                "Content-Length: 99999999999999999999",
                FrameError::InvalidContentLength,
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\n",
                FrameError::LineStructure,
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r",
                FrameError::LineStructure,
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 7\u{0}0\r\n",
                FrameError::LineStructure,
            ),
        ] {
            let raw = if to.is_empty() {
                OPTIONS.replace(&format!("{from}\r\n"), "")
            } else {
                OPTIONS.replace(from, to)
            };
            let mut f = framer(raw.as_bytes());
            assert_eq!(f.next(), Err(e.clone()), "{to:?}");
            // Sticky: the stream is over.
            f.push(OPTIONS.as_bytes());
            assert_eq!(f.next(), Err(e), "{to:?}");
        }
        assert_eq!(FrameError::MissingContentLength.status().0, 400);
        assert_eq!(FrameError::BodyTooLarge.status().0, 413);
    }

    #[test]
    fn other_header_problems_are_left_to_the_parser() {
        // Folding elsewhere: the boundary is clear, Message::parse refuses with 400.
        let raw = OPTIONS.replace("Call-ID: c1", "Call-ID: c1\r\n x");
        let frame = message(&mut framer(raw.as_bytes()));
        assert!(Message::parse(&frame).is_err());
        // A Content-Length lookalike in the start line is not a header.
        let raw = OPTIONS.replace("OPTIONS sip:a@example.com SIP/2.0", "Content-Length: 7");
        assert_eq!(message(&mut framer(raw.as_bytes())).len(), raw.len());
    }

    #[test]
    fn limits() {
        let mut f = framer(&vec![b'a'; MAX_HEADER_BYTES]);
        assert_eq!(f.next(), Err(FrameError::HeaderTooLarge));
        let mut f = framer(b"OPTIONS sip:a@b.com SIP/2.0\r\nX: a\nb");
        assert_eq!(f.next(), Err(FrameError::LineStructure));
        let mut f = StreamFramer::new();
        for _ in 0..5 {
            f.push(&vec![b'a'; MAX_MESSAGE_BYTES]);
        }
        assert_eq!(f.next(), Err(FrameError::Overflow));
        assert!(f.buffered().len() <= MAX_BUFFERED);
        // A body that ends the message beyond MAX_MESSAGE_BYTES.
        let big = OPTIONS.replace(
            "Content-Length: 5",
            &format!("Content-Length: {}", MAX_MESSAGE_BYTES - 100),
        );
        assert_eq!(framer(big.as_bytes()).next(), Err(FrameError::BodyTooLarge));
    }

    #[test]
    fn waits_for_the_whole_body() {
        let raw = OPTIONS.replace("Content-Length: 5", "Content-Length: 9999");
        let mut f = framer(raw.as_bytes());
        assert_eq!(f.next(), Ok(None));
        assert_eq!(f.buffered(), raw.as_bytes());
    }
}
