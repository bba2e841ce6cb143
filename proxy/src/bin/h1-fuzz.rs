//! Fuzz harness for the HTTP/1 engine's request side: reads one input on
//! stdin and panics (aborts) when the engine and the gate disagree about
//! it. Run under afl++ (docs/proxy.md, "Fuzzing"):
//!
//! afl-fuzz -n -i proxy/fuzz/seeds -o /tmp/h1-fuzz -V 60 -- target/release/h1-fuzz

use std::io::Read;

fn main() {
    let mut data = Vec::new();
    if std::io::stdin().read_to_end(&mut data).is_ok() {
        sotolito_proxy::h1::fuzz_request_stream(&data);
    }
}
