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

mod conn;
mod framing;
mod head;
mod local;
mod plan;
mod rewrite;
mod tunnel;

pub(crate) use conn::{ClientIo, Engine};
pub(crate) use local::Local;
