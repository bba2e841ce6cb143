//! The purpose-built HTTP/1 engine (`[proxy] engine = "h1"`, the
//! default): in the spirit of HAProxy's, for the common case of a proxy
//! that routes by Host.
//!
//! A request head is parsed once, with httparse, and checked as strictly
//! as the gate checks it for hyper ([`head`]); routed and rewritten
//! ([`plan`], [`rewrite`]) into a reused buffer that goes to a pooled
//! tenant connection in one write, with what of the body has already
//! arrived. The response head is parsed once and checked; anything
//! malformed, with conflicting framing or too large becomes a 502 before
//! a byte reaches the client. Bodies are relayed verbatim with their
//! framing checked incrementally ([`framing`]). Buffers and tenant
//! connections belong to the worker ([`local`]): an idle client
//! connection holds neither, and a request in the steady state allocates
//! nothing. HTTP/2 and what is not HTTP/1 stay with hyper.

mod client;
mod conn;
pub(crate) mod framing;
pub(crate) mod head;
pub(crate) mod local;
mod plan;
mod rewrite;
mod tunnel;

pub(crate) use conn::{read_response_head, ReadFail, Timer};

pub(crate) use client::ClientTcp;
pub(crate) use conn::{ClientIo, Engine, Served};
pub(crate) use local::Local;
pub(crate) use plan::STOPPED_PAGE;

/// For the fuzz harness (`src/bin/h1-fuzz.rs`): runs one client byte
/// stream through the request side of the engine (head, checks, rewrite,
/// body framing) and panics if it disagrees with the gate: whatever the
/// gate refuses must be refused here, and a request the engine accepts
/// must be framed as the gate frames it.
#[doc(hidden)]
pub fn fuzz_request_stream(data: &[u8]) {
    use httparse::EMPTY_HEADER;
    let mut gate = crate::gate::Gate::new(16 * 1024, crate::gate::Switch::default());
    let mut released = bytes::BytesMut::new();
    let gate_ok = gate.feed(data, &mut released).is_ok();

    let mut at = 0;
    let mut engine_ok = true;
    let mut out = Vec::new();
    while at < data.len() {
        at += head::leading_empty_lines(&data[at..]);
        let len = match head::head_end(&data[at..], 0) {
            Ok(Some(len)) if len <= 16 * 1024 => len,
            Ok(_) => break,
            Err(_) => {
                engine_ok = false;
                break;
            }
        };
        let mut storage = [EMPTY_HEADER; conn::MAX_HEADERS];
        let req = match head::parse_request(&data[at..], len, &mut storage[..100]) {
            Ok(req) => req,
            Err(_) => {
                engine_ok = false;
                break;
            }
        };
        out.clear();
        let fwd = rewrite::Forwarding {
            ip: "192.0.2.1",
            node: "192.0.2.1",
            proto: "http",
            trusted: false,
        };
        rewrite::request_head(&req, req.host.unwrap_or(b""), &fwd, &mut out);
        // The rewritten head parses again, with the same framing.
        let mut again = [EMPTY_HEADER; conn::MAX_HEADERS];
        let re = head::parse_request(&out, out.len(), &mut again);
        assert!(
            req.host
                .is_none_or(|h| !h.iter().all(|&b| (0x20..0x7f).contains(&b)))
                || re.as_ref().is_ok_and(|r| r.body == req.body),
            "rewritten head {:?} of {:?} reads differently: {re:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&data[at..at + len])
        );
        let (body, upgrade) = (req.body, req.upgrade);
        at += len;
        if upgrade {
            break;
        }
        let mut framer = match body {
            head::BodyKind::Length(n) => framing::Framer::length(n),
            head::BodyKind::Chunked => framing::Framer::chunked(),
            _ => continue,
        };
        match framer.advance(&data[at..]) {
            Ok(step) if step.done => at += step.used,
            Ok(_) => break,
            Err(_) => {
                engine_ok = false;
                break;
            }
        }
    }
    assert!(
        engine_ok || !gate_ok,
        "the engine refused what the gate passes: {:?}",
        String::from_utf8_lossy(data)
    );
    assert!(
        gate_ok || !engine_ok,
        "the engine passed what the gate refuses: {:?}",
        String::from_utf8_lossy(data)
    );
}
