//! A strict HTTP/1.1 framing check in front of hyper's parser.
//!
//! hyper accepts some requests leniently (bare LF line ends, Content-Length
//! beside Transfer-Encoding, ...). Where a proxy and a tenant's server read
//! such bytes differently, requests get smuggled (RFC 9112 11.2), so every
//! request head and chunked body passes through here first. A request head
//! is held back until it is complete and valid; on the first violation the
//! rest of the stream is replaced by a byte hyper refuses, so hyper answers
//! 400 and closes, and nothing of the bad request is forwarded.
//!
//! After a request that asks to switch protocols, nothing more is released
//! until the tenant has answered 101 ([`Switch`]): an answer the proxy made
//! itself, or any other status, ends the connection instead, so no later
//! request on it can skip the checks (HAProxy and Envoy do the same).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

/// Why a request was refused (logged, and named in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    BareLf,
    BareCr,
    ObsFold,
    RequestLine,
    HeaderName,
    HeaderValue,
    ContentLength,
    ContentLengthWithTransferEncoding,
    TransferEncoding,
    Host,
    AuthorityMismatch,
    ChunkSize,
    ChunkEnd,
}

/// Fed to hyper in place of a refused request: NUL is valid in no part of a
/// request line, header or chunk-size line, so hyper fails with a 400.
pub(crate) const POISON: &[u8] = b"\0\r\n\r\n";

const MAX_CHUNK_DIGITS: u8 = 15;
const MAX_CHUNK_EXT: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize {
        digits: u8,
        size: u64,
        ext: u16,
        cr: bool,
    },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// In the trailer section; `line` says whether the current line has bytes.
    Trailers {
        line: bool,
        cr: bool,
    },
    /// After an upgrade request: what the client sends next is held in
    /// `head` until the tenant switched protocols.
    AwaitSwitch,
    /// After a switch or an oversized head: the bytes are not HTTP/1 any
    /// more, or hyper refuses them itself (431).
    Passthrough,
}

/// Set once the tenant answered an upgrade request with 101; shared by a
/// connection's gate and the requests on it. The connection also waits
/// for the tunnel's end through it: an upgraded connection keeps its
/// place in the connection limits until then.
#[derive(Clone, Default)]
pub(crate) struct Switch(Arc<SwitchState>);

#[derive(Default)]
struct SwitchState {
    switched: AtomicBool,
    tunnel_ended: tokio::sync::Notify,
}

impl Switch {
    /// The tenant switched protocols; the tunnel holds the guard.
    pub(crate) fn switched(&self) -> TunnelGuard {
        self.0.switched.store(true, Ordering::Release);
        TunnelGuard(self.clone())
    }

    fn is_switched(&self) -> bool {
        self.0.switched.load(Ordering::Acquire)
    }

    /// Returns once the tunnel started after a 101 has ended (at once if
    /// there was none).
    pub(crate) async fn tunnel_ended(&self) {
        if self.is_switched() {
            self.0.tunnel_ended.notified().await;
        }
    }
}

/// Held by an upgraded connection's tunnel; its drop is the tunnel's end.
pub(crate) struct TunnelGuard(Switch);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        // A stored permit if the connection is not waiting yet.
        (self.0).0.tunnel_ended.notify_one();
    }
}

pub(crate) struct Gate {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    /// The message being read switches protocols once its body ends.
    upgrade_after: bool,
    switch: Switch,
}

impl Gate {
    pub(crate) fn new(max_head: usize, switch: Switch) -> Gate {
        Gate {
            state: State::Head,
            head: Vec::new(),
            max_head,
            upgrade_after: false,
            switch,
        }
    }

    /// A request head has started and is not yet complete, or bytes sent
    /// after an upgrade request wait for the switch: either way the
    /// request-head timer runs.
    pub(crate) fn head_pending(&self) -> bool {
        matches!(self.state, State::Head | State::AwaitSwitch) && !self.head.is_empty()
    }

    /// A head grew over the limit and went on for hyper to refuse (431).
    pub(crate) fn gave_up(&self) -> bool {
        self.state == State::Passthrough && !self.switch.is_switched()
    }

    /// Waiting for the tenant's 101 with as much held back as a head may
    /// be: read no more (the socket's buffer pushes back on the client).
    pub(crate) fn hold_full(&self) -> bool {
        self.state == State::AwaitSwitch && self.head.len() >= self.max_head
    }

    /// Once the tenant switched protocols, releases what was held back and
    /// passes everything from then on. True if the state changed.
    pub(crate) fn take_switch(&mut self, out: &mut BytesMut) -> bool {
        if self.state != State::AwaitSwitch || !self.switch.is_switched() {
            return false;
        }
        out.extend_from_slice(&self.head);
        self.head = Vec::new();
        self.state = State::Passthrough;
        true
    }

    /// Checks `input`, appending what may go on to hyper to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Violation> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(&input[i..]);
                    return Ok(());
                }
                State::AwaitSwitch => {
                    self.head.extend_from_slice(&input[i..]);
                    self.take_switch(out);
                    return Ok(());
                }
                State::Head => {
                    let rest = &input[i..];
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.head.extend_from_slice(rest);
                        self.check_head_size(out);
                        return Ok(());
                    };
                    self.head.extend_from_slice(&rest[..=nl]);
                    i += nl + 1;
                    if self.head.len() < 2 || self.head[self.head.len() - 2] != b'\r' {
                        return Err(Violation::BareLf);
                    }
                    if self.head == b"\r\n" {
                        // RFC 9112 2.2: an empty line before a request is ignored.
                        self.head.clear();
                    } else if self.head.ends_with(b"\r\n\r\n") {
                        let framing = check_head(&self.head)?;
                        out.extend_from_slice(&self.head);
                        self.head.clear();
                        self.upgrade_after = framing.upgrade;
                        self.state = match framing.body {
                            BodyFraming::None => State::Head,
                            BodyFraming::Length(n) => State::Body(n),
                            BodyFraming::Chunked => State::ChunkSize {
                                digits: 0,
                                size: 0,
                                ext: 0,
                                cr: false,
                            },
                        };
                        self.end_of_message_check();
                    } else {
                        self.check_head_size(out);
                    }
                }
                State::Body(n) => {
                    let take = (input.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = State::Body(n - take as u64);
                    self.end_of_message_check();
                }
                State::ChunkData(n) => {
                    let take = (input.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData(left)
                    };
                }
                _ => {
                    let b = input[i];
                    self.chunk_byte(b)?;
                    out.extend_from_slice(&input[i..=i]);
                    i += 1;
                    self.end_of_message_check();
                }
            }
        }
        Ok(())
    }

    fn check_head_size(&mut self, out: &mut BytesMut) {
        if self.head.len() > self.max_head {
            // hyper's own buffer limit answers 431 for this head.
            out.extend_from_slice(&self.head);
            self.head.clear();
            self.state = State::Passthrough;
        }
    }

    fn end_of_message_check(&mut self) {
        if self.state == State::Body(0) {
            self.state = State::Head;
        }
        if self.state == State::Head && self.upgrade_after {
            self.state = State::AwaitSwitch;
        }
    }

    fn chunk_byte(&mut self, b: u8) -> Result<(), Violation> {
        self.state = match self.state {
            State::ChunkSize {
                digits,
                size,
                ext,
                cr,
            } => {
                if cr {
                    if b != b'\n' {
                        return Err(Violation::BareCr);
                    }
                    if digits == 0 {
                        return Err(Violation::ChunkSize);
                    }
                    if size == 0 {
                        State::Trailers {
                            line: false,
                            cr: false,
                        }
                    } else {
                        State::ChunkData(size)
                    }
                } else if b == b'\r' {
                    State::ChunkSize {
                        digits,
                        size,
                        ext,
                        cr: true,
                    }
                } else if b == b'\n' {
                    return Err(Violation::BareLf);
                } else if ext > 0 {
                    if ext >= MAX_CHUNK_EXT || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(Violation::ChunkSize);
                    }
                    State::ChunkSize {
                        digits,
                        size,
                        ext: ext + 1,
                        cr,
                    }
                } else if b == b';' && digits > 0 {
                    State::ChunkSize {
                        digits,
                        size,
                        ext: 1,
                        cr,
                    }
                } else {
                    let d = (b as char).to_digit(16).ok_or(Violation::ChunkSize)?;
                    if digits >= MAX_CHUNK_DIGITS {
                        return Err(Violation::ChunkSize);
                    }
                    State::ChunkSize {
                        digits: digits + 1,
                        size: size * 16 + u64::from(d),
                        ext,
                        cr,
                    }
                }
            }
            State::ChunkDataCr if b == b'\r' => State::ChunkDataLf,
            State::ChunkDataLf if b == b'\n' => State::ChunkSize {
                digits: 0,
                size: 0,
                ext: 0,
                cr: false,
            },
            State::ChunkDataCr | State::ChunkDataLf => return Err(Violation::ChunkEnd),
            State::Trailers { line, cr } => {
                if cr {
                    if b != b'\n' {
                        return Err(Violation::BareCr);
                    }
                    if line {
                        State::Trailers {
                            line: false,
                            cr: false,
                        }
                    } else {
                        State::Head
                    }
                } else if b == b'\r' {
                    State::Trailers { line, cr: true }
                } else if b == b'\n' {
                    return Err(Violation::BareLf);
                } else if !line && (b == b' ' || b == b'\t') {
                    return Err(Violation::ObsFold);
                } else {
                    State::Trailers {
                        line: true,
                        cr: false,
                    }
                }
            }
            s => s,
        };
        Ok(())
    }
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

struct Framing {
    body: BodyFraming,
    upgrade: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// Validates a complete head (ending in CRLF CRLF) and says how its body is
/// framed.
fn check_head(head: &[u8]) -> Result<Framing, Violation> {
    let body = &head[..head.len() - 4];
    // Lines end in CRLF (bare LF was refused while reading), so a CR
    // anywhere else is a bare CR.
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(Violation::RequestLine)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(if request_line.contains(&b'\r') {
            Violation::BareCr
        } else {
            Violation::RequestLine
        });
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Violation::RequestLine);
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(Violation::RequestLine);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Violation::RequestLine),
    };

    let mut content_length: Option<u64> = None;
    let mut te_codings: Vec<Vec<u8>> = Vec::new();
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut has_upgrade = false;
    let mut connection_upgrade = false;
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(Violation::ObsFold);
        }
        if line.contains(&b'\r') {
            return Err(Violation::BareCr);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Violation::HeaderName)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Violation::HeaderName);
        }
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(Violation::HeaderValue);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',') {
                let item = trim(item);
                if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
                    return Err(Violation::ContentLength);
                }
                let n = item
                    .iter()
                    .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(Violation::ContentLength);
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for item in value.split(|&b| b == b',') {
                te_codings.push(trim(item).to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= value
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
        }
    }

    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Violation::Host);
    }
    check_target(method, target, host)?;

    let body = if !te_codings.is_empty() {
        if content_length.is_some() {
            return Err(Violation::ContentLengthWithTransferEncoding);
        }
        let chunked = te_codings
            .iter()
            .filter(|c| c.as_slice() == b"chunked")
            .count();
        if !http11 || chunked != 1 || te_codings.last().map(Vec::as_slice) != Some(b"chunked") {
            return Err(Violation::TransferEncoding);
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(n) if n > 0 => BodyFraming::Length(n),
            _ => BodyFraming::None,
        }
    };
    let upgrade = (has_upgrade && connection_upgrade) || method == b"CONNECT";
    Ok(Framing { body, upgrade })
}

/// Origin form, or absolute form naming the same authority as Host
/// (RFC 9112 3.2.2), or `*` for OPTIONS, or authority form for CONNECT.
fn check_target(method: &[u8], target: &[u8], host: Option<&[u8]>) -> Result<(), Violation> {
    if target[0] == b'/' {
        return Ok(());
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(())
        } else {
            Err(Violation::RequestLine)
        };
    }
    if method == b"CONNECT" {
        return Ok(());
    }
    let lower = target.to_ascii_lowercase();
    let rest = lower
        .strip_prefix(b"http://")
        .or_else(|| lower.strip_prefix(b"https://"))
        .ok_or(Violation::RequestLine)?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Violation::AuthorityMismatch);
    }
    match host {
        Some(h) if h.eq_ignore_ascii_case(authority) => Ok(()),
        _ => Err(Violation::AuthorityMismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, Result<(), Violation>) {
        let mut gate = Gate::new(8192, Switch::default());
        let mut out = BytesMut::new();
        let r = gate.feed(input, &mut out);
        (out.to_vec(), r)
    }

    fn refused(input: &str) -> Violation {
        let (out, r) = run(input.as_bytes());
        assert!(
            out.is_empty(),
            "released {:?}",
            String::from_utf8_lossy(&out)
        );
        r.unwrap_err()
    }

    #[test]
    fn good_requests_pass_whole_and_pipelined() {
        let req = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n\
                   POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello\
                   POST /y HTTP/1.1\r\nhost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n\
                   GET http://a.test/z HTTP/1.1\r\nHost: A.test\r\n\r\n";
        let (out, r) = run(req.as_bytes());
        r.unwrap();
        assert_eq!(out, req.as_bytes());
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let req = b"POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut gate = Gate::new(8192, Switch::default());
        let mut out = BytesMut::new();
        for b in req.iter() {
            gate.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(&out[..], &req[..]);
        assert!(!gate.head_pending());
    }

    #[test]
    fn incomplete_heads_are_held_back() {
        let mut gate = Gate::new(8192, Switch::default());
        let mut out = BytesMut::new();
        gate.feed(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert!(gate.head_pending());
        gate.feed(b"\r\n", &mut out).unwrap();
        assert_eq!(out.len(), 27);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        use Violation::*;
        let cases: &[(&str, Violation)] = &[
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", BareLf),
            ("GET / HTTP/1.1\r\nHost: a\n\n", BareLf),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", BareCr),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", ObsFold),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HeaderName),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", HeaderValue),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", RequestLine),
            ("GET / HTTP/1.1\r\n\r\n", Host),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Host),
            ("GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", AuthorityMismatch),
            ("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", AuthorityMismatch),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", ContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", ContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", ContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthWithTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", TransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", TransferEncoding),
            ("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncoding),
        ];
        for (req, want) in cases {
            assert_eq!(refused(req), *want, "{req:?}");
        }
    }

    #[test]
    fn bad_chunks_are_refused_where_they_start() {
        use Violation::*;
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: &[(&str, Violation)] = &[
            ("zz\r\n", ChunkSize),
            ("-1\r\n", ChunkSize),
            ("\r\n", ChunkSize),
            ("ffffffffffffffffff\r\n", ChunkSize),
            ("5 \r\nhello\r\n", ChunkSize),
            ("5\nhello\r\n", BareLf),
            ("5\r\nhelloX\r\n", ChunkEnd),
            ("0\r\nx: a\n\r\n", BareLf),
            ("0\r\n b\r\n\r\n", ObsFold),
        ];
        for (body, want) in cases {
            let (out, r) = run(format!("{head}{body}").as_bytes());
            assert_eq!(r, Err(*want), "{body:?}");
            assert!(out.starts_with(head.as_bytes()));
        }
    }

    #[test]
    fn oversized_heads_pass_through() {
        let mut gate = Gate::new(16, Switch::default());
        let mut out = BytesMut::new();
        let long = b"GET /aaaaaaaaaaaaaaaaaaaaaaa";
        gate.feed(long, &mut out).unwrap();
        assert_eq!(&out[..], &long[..]);
    }

    const UPGRADE: &[u8] =
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn after_an_upgrade_request_bytes_wait_for_the_switch() {
        let switch = Switch::default();
        let mut gate = Gate::new(8192, switch.clone());
        let mut out = BytesMut::new();
        let early = b"\x81\x05hello";
        gate.feed(&[UPGRADE, early].concat(), &mut out).unwrap();
        assert_eq!(&out[..], UPGRADE);
        assert!(gate.head_pending(), "held bytes run the head timer");
        assert!(!gate.take_switch(&mut out));
        switch.switched();
        assert!(gate.take_switch(&mut out));
        gate.feed(b"\n\n", &mut out).unwrap();
        assert_eq!(&out[..], &[UPGRADE, early, b"\n\n"].concat()[..]);
        assert!(!gate.head_pending());
    }

    #[test]
    fn without_a_switch_nothing_after_an_upgrade_request_is_released() {
        let mut gate = Gate::new(80, Switch::default());
        let mut out = BytesMut::new();
        let next = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        gate.feed(UPGRADE, &mut out).unwrap();
        for _ in 0..3 {
            gate.feed(next, &mut out).unwrap();
        }
        assert_eq!(&out[..], UPGRADE);
        assert!(gate.head_pending());
        assert!(gate.hold_full());
        let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
        let mut gate = Gate::new(8192, Switch::default());
        let mut out = BytesMut::new();
        gate.feed(&[&connect[..], next].concat(), &mut out).unwrap();
        assert_eq!(&out[..], connect);
    }
}
