//! Request and response heads: found in the buffer, parsed once with
//! httparse, and checked as strictly as the gate (crate::gate) checks
//! requests, so what the gate refuses is refused here too and nothing
//! ambiguous passes in either direction (RFC 9112 11.2).

use httparse::{Header, ParserConfig, Status};

use crate::gate::Violation;

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Until the tenant closes (responses only).
    Close,
}

/// Why a request head was refused: 400, or 431 for too many fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Bad(Violation),
    TooManyHeaders,
}

/// A request head, borrowing the connection's buffer.
#[derive(Debug)]
pub(crate) struct Request<'h, 'b> {
    pub method: &'b [u8],
    pub target: &'b [u8],
    pub http11: bool,
    pub headers: &'h [Header<'b>],
    pub host: Option<&'b [u8]>,
    pub body: BodyKind,
    /// `Upgrade` with `Connection: upgrade`, or CONNECT: the last request
    /// of the connection unless the tenant switches protocols.
    pub upgrade: bool,
    /// Any `Upgrade` header or CONNECT: every answer but a 101 closes.
    pub asks_upgrade: bool,
    /// The client asked to close after this exchange (or is HTTP/1.0).
    pub close: bool,
    pub expect_continue: bool,
}

/// A tenant's response head.
#[derive(Debug)]
pub(crate) struct Response<'h, 'b> {
    pub code: u16,
    pub reason: &'b [u8],
    pub headers: &'h [Header<'b>],
    pub body: BodyKind,
    /// The tenant keeps the connection open after this response.
    pub reusable: bool,
}

/// Why a tenant's response head was refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadResponse {
    Syntax,
    ContentLength,
    TransferEncoding,
    TooManyHeaders,
}

/// Where the head at the start of `buf` ends (after CRLF CRLF), scanning
/// from `from` (bytes before it were scanned by an earlier call). A LF
/// without CR before it is refused: hyper and httparse take one as a line
/// end, tenants' servers may not.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Result<Option<usize>, Violation> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        if nl == 0 || buf[nl - 1] != b'\r' {
            return Err(Violation::BareLf);
        }
        if nl >= 3 && &buf[nl - 3..nl - 1] == b"\r\n" {
            return Ok(Some(nl + 1));
        }
        i = nl + 1;
    }
    Ok(None)
}

/// Empty lines before a request are ignored (RFC 9112 2.2): how many
/// bytes of them `buf` starts with; a lone CR waits for its LF.
pub(crate) fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    while buf.len() >= i + 2 && &buf[i..i + 2] == b"\r\n" {
        i += 2;
    }
    i
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

/// Content-Length's value: digits, a list of equal values at most.
fn content_length(value: &[u8], prev: Option<u64>) -> Option<u64> {
    let mut n = prev;
    for item in value.split(|&b| b == b',') {
        let item = trim(item);
        if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = item
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if n.is_some_and(|p| p != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

/// Whether a comma-separated header value lists `token`.
pub(crate) fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Transfer-Encoding codings so far: (codings seen, `chunked` seen, last
/// one was `chunked`).
#[derive(Default)]
struct Codings {
    count: usize,
    chunked: usize,
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let c = trim(item).eq_ignore_ascii_case(b"chunked");
            self.count += 1;
            self.chunked += usize::from(c);
            self.last_chunked = c;
        }
    }
}

/// Parses and checks the complete request head at the start of `buf`
/// (`len` bytes, from [`head_end`]).
pub(crate) fn parse_request<'h, 'b>(
    buf: &'b [u8],
    len: usize,
    headers: &'h mut [Header<'b>],
) -> Result<Request<'h, 'b>, Refused> {
    use Violation as V;
    let head = &buf[..len];
    let mut req = httparse::Request::new(headers);
    let parsed = req.parse(head).map_err(|e| {
        Refused::Bad(match e {
            httparse::Error::TooManyHeaders => return Refused::TooManyHeaders,
            httparse::Error::HeaderName => V::HeaderName,
            httparse::Error::HeaderValue => V::HeaderValue,
            httparse::Error::NewLine => V::BareCr,
            _ => V::RequestLine,
        })
    })?;
    if parsed != Status::Complete(len) {
        return Err(Refused::Bad(V::RequestLine));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refused::Bad(V::RequestLine));
    };
    let (method, target) = (method.as_bytes(), target.as_bytes());
    // httparse lets UTF-8 through in the target; the gate does not.
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(Refused::Bad(V::RequestLine));
    }
    let http11 = version == 1;
    let headers: &'h [Header<'b>] = req.headers;

    let mut cl: Option<u64> = None;
    let mut te = Codings::default();
    let mut host = None;
    let mut hosts = 0;
    let mut has_upgrade = false;
    let (mut conn_upgrade, mut conn_close, mut conn_keep_alive) = (false, false, false);
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        if !h.value.iter().all(|&b| is_value_byte(b)) {
            return Err(Refused::Bad(V::HeaderValue));
        }
        let value = trim(h.value);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                host = Some(value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => has_upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                conn_upgrade |= lists(value, b"upgrade");
                conn_close |= lists(value, b"close");
                conn_keep_alive |= lists(value, b"keep-alive");
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                cl = Some(content_length(value, cl).ok_or(Refused::Bad(V::ContentLength))?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => te.add(value),
            _ => {}
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Refused::Bad(V::Host));
    }
    check_target(method, target, host).map_err(Refused::Bad)?;
    let body = if te.count > 0 {
        if cl.is_some() {
            return Err(Refused::Bad(V::ContentLengthWithTransferEncoding));
        }
        if !http11 || te.chunked != 1 || !te.last_chunked {
            return Err(Refused::Bad(V::TransferEncoding));
        }
        BodyKind::Chunked
    } else {
        match cl {
            Some(n) if n > 0 => BodyKind::Length(n),
            _ => BodyKind::None,
        }
    };
    let connect = method == b"CONNECT";
    Ok(Request {
        method,
        target,
        http11,
        headers,
        host,
        body,
        upgrade: (has_upgrade && conn_upgrade) || connect,
        asks_upgrade: has_upgrade || connect,
        close: conn_close || (!http11 && !conn_keep_alive),
        expect_continue,
    })
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
    let authority = absolute_authority(target).ok_or(Violation::RequestLine)?;
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Violation::AuthorityMismatch);
    }
    match host {
        Some(h) if h.eq_ignore_ascii_case(authority) => Ok(()),
        _ => Err(Violation::AuthorityMismatch),
    }
}

/// The authority of an `http://` or `https://` target.
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[scheme..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The origin form the tenant gets: an absolute target loses its scheme
/// and authority (already checked against Host).
pub(crate) fn origin_form(target: &[u8]) -> &[u8] {
    match absolute_authority(target) {
        Some(authority) => {
            let start = authority.as_ptr() as usize - target.as_ptr() as usize + authority.len();
            match &target[start..] {
                [] => b"/",
                rest if rest[0] == b'/' => rest,
                // `http://a?x` or `http://a#f`: the path is empty.
                _ => b"/",
            }
        }
        None => target,
    }
}

/// Parses and checks a tenant's complete response head (`len` bytes at
/// the start of `buf`) to a request that was a HEAD (`head`).
pub(crate) fn parse_response<'h, 'b>(
    buf: &'b [u8],
    len: usize,
    headers: &'h mut [Header<'b>],
    head: bool,
) -> Result<Response<'h, 'b>, BadResponse> {
    let mut res = httparse::Response::new(headers);
    let parsed = ParserConfig::default()
        .parse_response(&mut res, &buf[..len])
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => BadResponse::TooManyHeaders,
            _ => BadResponse::Syntax,
        })?;
    if parsed != Status::Complete(len) {
        return Err(BadResponse::Syntax);
    }
    let (Some(code), Some(version)) = (res.code, res.version) else {
        return Err(BadResponse::Syntax);
    };
    let reason = res.reason.unwrap_or("").as_bytes();
    if !(100..=599).contains(&code) || reason.iter().any(|&b| !is_value_byte(b)) {
        return Err(BadResponse::Syntax);
    }
    let headers: &'h [Header<'b>] = res.headers;
    let mut cl = None;
    let mut te = Codings::default();
    let (mut close, mut keep_alive) = (false, false);
    for h in headers {
        let name = h.name.as_bytes();
        if !h.value.iter().all(|&b| is_value_byte(b)) {
            return Err(BadResponse::Syntax);
        }
        let value = trim(h.value);
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                close |= lists(value, b"close");
                keep_alive |= lists(value, b"keep-alive");
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                cl = Some(content_length(value, cl).ok_or(BadResponse::ContentLength)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => te.add(value),
            _ => {}
        }
    }
    // Conflicting or unknown framing is refused rather than guessed at:
    // the client must never be able to read two responses out of one.
    if te.count > 0 && (cl.is_some() || te.chunked != 1 || !te.last_chunked || version == 0) {
        return Err(BadResponse::TransferEncoding);
    }
    let bodiless = head || code < 200 || code == 204 || code == 304;
    let body = if bodiless {
        BodyKind::None
    } else if te.count > 0 {
        BodyKind::Chunked
    } else {
        match cl {
            Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::Close,
        }
    };
    let reusable =
        body != BodyKind::Close && !close && (version == 1 || keep_alive) && !(code == 101);
    Ok(Response {
        code,
        reason,
        headers,
        body,
        reusable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use httparse::EMPTY_HEADER;

    fn req(s: &str) -> Result<(BodyKind, bool, bool), Refused> {
        let b = s.as_bytes();
        let len = match head_end(b, 0) {
            Ok(Some(n)) => n,
            Ok(None) => panic!("incomplete {s:?}"),
            Err(v) => return Err(Refused::Bad(v)),
        };
        let mut h = [EMPTY_HEADER; 100];
        parse_request(b, len, &mut h).map(|r| (r.body, r.upgrade, r.close))
    }

    #[test]
    fn good_requests_parse_with_their_framing() {
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok((BodyKind::None, false, false))
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok((BodyKind::Length(5), false, false))
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: gzip, Chunked\r\nConnection: close\r\n\r\n"),
            Ok((BodyKind::Chunked, false, true))
        );
        assert_eq!(
            req("GET / HTTP/1.0\r\n\r\n"),
            Ok((BodyKind::None, false, true))
        );
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Ok((BodyKind::None, true, false))
        );
    }

    #[test]
    fn origin_form_drops_scheme_and_authority() {
        assert_eq!(origin_form(b"/x?y"), b"/x?y");
        assert_eq!(origin_form(b"http://a.test/x?y"), b"/x?y");
        assert_eq!(origin_form(b"HTTPS://a.test"), b"/");
        assert_eq!(origin_form(b"http://a.test?q"), b"/");
        assert_eq!(origin_form(b"*"), b"*");
    }

    fn res(s: &str, head: bool) -> Result<(u16, BodyKind, bool), BadResponse> {
        let b = s.as_bytes();
        let len = match head_end(b, 0) {
            Ok(Some(n)) => n,
            Ok(None) => panic!("incomplete"),
            Err(_) => return Err(BadResponse::Syntax),
        };
        let mut h = [EMPTY_HEADER; 100];
        parse_response(b, len, &mut h, head).map(|r| (r.code, r.body, r.reusable))
    }

    #[test]
    fn responses_are_framed_or_refused() {
        use BadResponse::*;
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok((200, BodyKind::Length(3), true))
        );
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok((200, BodyKind::None, true))
        );
        assert_eq!(
            res(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok((200, BodyKind::Chunked, true))
        );
        assert_eq!(
            res("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok((200, BodyKind::Close, false))
        );
        assert_eq!(
            res("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            Ok((200, BodyKind::None, false))
        );
        assert_eq!(
            res(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok((304, BodyKind::None, true))
        );
        for (bad, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                TransferEncoding,
            ),
            ("HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n", Syntax),
            ("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", Syntax),
            ("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", Syntax),
            ("HTTP/1.1 99 OK\r\n\r\n", Syntax),
            ("HTTP/2 200 OK\r\n\r\n", Syntax),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                ContentLength,
            ),
        ] {
            assert_eq!(res(bad, false), Err(want), "{bad:?}");
        }
    }

    #[test]
    fn head_end_refuses_bare_lf_and_resumes() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
            Ok(Some(27))
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), Ok(None));
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 20),
            Ok(Some(27))
        );
        assert_eq!(
            head_end(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 0),
            Err(Violation::BareLf)
        );
        assert_eq!(leading_empty_lines(b"\r\n\r\nGET"), 4);
        assert_eq!(leading_empty_lines(b"\r"), 0);
    }
}
