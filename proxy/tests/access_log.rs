//! The access log: one line per request, written by the worker threads
//! when the response body ends. Its own test binary, since it installs the
//! process-wide tracing subscriber.

#![allow(clippy::unwrap_used)]

#[path = "proxy/common.rs"]
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{get, proxy, Backend};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_request_gets_one_access_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("sotolito_proxy::access=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    assert_eq!(get(addr, "a.test", "/x?y=1").status, 200);
    assert_eq!(get(addr, "nobody.test", "/missing").status, 404);

    // The line is written when the response body ends, on the worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = lines
        .iter()
        .find(|l| l.contains("path=/x?y=1"))
        .expect(&text);
    for field in [
        "tenant=a",
        "host=a.test",
        "method=GET",
        "status=200",
        "bytes=15",
        "duration_ms=",
        "upstream_ms=",
        "client=127.0.0.1:",
    ] {
        assert!(ok.contains(field), "{field} missing in {ok}");
    }
    let missing = lines
        .iter()
        .find(|l| l.contains("path=/missing"))
        .expect(&text);
    assert!(missing.contains("status=404"), "{missing}");
    assert!(missing.contains("tenant= "), "{missing}");
}
