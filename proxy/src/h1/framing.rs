//! Message bodies as bytes on the wire: how long one is (Content-Length,
//! chunked, until close) and where it ends, checked incrementally so a
//! body is relayed verbatim as it arrives and any split of it into reads
//! gives the same result as one read.
//!
//! The chunked rules are the gate's (crate::gate), byte for byte: at most
//! 15 hex digits, extensions of at most 1 KiB without control bytes,
//! CRLF everywhere, trailers without obs-fold.

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadBody {
    ChunkSize,
    ChunkEnd,
    BareLf,
    BareCr,
    ObsFold,
}

const MAX_CHUNK_DIGITS: u8 = 15;
const MAX_CHUNK_EXT: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size {
        digits: u8,
        size: u64,
        ext: u16,
        cr: bool,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// `line`: the current trailer line has bytes.
    Trailers {
        line: bool,
        cr: bool,
    },
    Done,
}

/// Where one message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framer {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the sender closes (responses only).
    Close,
}

/// What [`Framer::advance`] found in one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// Bytes of the input that belong to this body (a prefix).
    pub used: usize,
    /// The body is complete; bytes after `used` are the next message's.
    pub done: bool,
}

impl Framer {
    pub(crate) fn length(n: u64) -> Framer {
        Framer::Length(n)
    }

    pub(crate) fn chunked() -> Framer {
        Framer::Chunked(Chunk::Size {
            digits: 0,
            size: 0,
            ext: 0,
            cr: false,
        })
    }

    /// Complete with no more bytes (a zero length, or the last chunk and
    /// trailers seen).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Framer::Length(0) | Framer::Chunked(Chunk::Done))
    }

    /// Consumes the body's bytes at the start of `input`.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Result<Step, BadBody> {
        match self {
            Framer::Close => Ok(Step {
                used: input.len(),
                done: false,
            }),
            Framer::Length(n) => {
                let take = usize::try_from(*n).map_or(input.len(), |n| n.min(input.len()));
                *n -= take as u64;
                Ok(Step {
                    used: take,
                    done: *n == 0,
                })
            }
            Framer::Chunked(state) => {
                let mut i = 0;
                while i < input.len() {
                    match *state {
                        Chunk::Done => break,
                        Chunk::Data(n) => {
                            let take = usize::try_from(n)
                                .map_or(input.len() - i, |n| n.min(input.len() - i));
                            i += take;
                            let left = n - take as u64;
                            *state = if left == 0 {
                                Chunk::DataCr
                            } else {
                                Chunk::Data(left)
                            };
                        }
                        _ => {
                            *state = chunk_byte(*state, input[i])?;
                            i += 1;
                        }
                    }
                }
                Ok(Step {
                    used: i,
                    done: *state == Chunk::Done,
                })
            }
        }
    }
}

fn chunk_byte(state: Chunk, b: u8) -> Result<Chunk, BadBody> {
    Ok(match state {
        Chunk::Size {
            digits,
            size,
            ext,
            cr,
        } => {
            if cr {
                if b != b'\n' {
                    return Err(BadBody::BareCr);
                }
                if digits == 0 {
                    return Err(BadBody::ChunkSize);
                }
                if size == 0 {
                    Chunk::Trailers {
                        line: false,
                        cr: false,
                    }
                } else {
                    Chunk::Data(size)
                }
            } else if b == b'\r' {
                Chunk::Size {
                    digits,
                    size,
                    ext,
                    cr: true,
                }
            } else if b == b'\n' {
                return Err(BadBody::BareLf);
            } else if ext > 0 {
                if ext >= MAX_CHUNK_EXT || (b < 0x20 && b != b'\t') || b == 0x7f {
                    return Err(BadBody::ChunkSize);
                }
                Chunk::Size {
                    digits,
                    size,
                    ext: ext + 1,
                    cr,
                }
            } else if b == b';' && digits > 0 {
                Chunk::Size {
                    digits,
                    size,
                    ext: 1,
                    cr,
                }
            } else {
                let d = (b as char).to_digit(16).ok_or(BadBody::ChunkSize)?;
                if digits >= MAX_CHUNK_DIGITS {
                    return Err(BadBody::ChunkSize);
                }
                Chunk::Size {
                    digits: digits + 1,
                    size: size * 16 + u64::from(d),
                    ext,
                    cr,
                }
            }
        }
        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
        Chunk::DataLf if b == b'\n' => Chunk::Size {
            digits: 0,
            size: 0,
            ext: 0,
            cr: false,
        },
        Chunk::DataCr | Chunk::DataLf => return Err(BadBody::ChunkEnd),
        Chunk::Trailers { line, cr } => {
            if cr {
                if b != b'\n' {
                    return Err(BadBody::BareCr);
                }
                if line {
                    Chunk::Trailers {
                        line: false,
                        cr: false,
                    }
                } else {
                    Chunk::Done
                }
            } else if b == b'\r' {
                Chunk::Trailers { line, cr: true }
            } else if b == b'\n' {
                return Err(BadBody::BareLf);
            } else if !line && (b == b' ' || b == b'\t') {
                return Err(BadBody::ObsFold);
            } else {
                Chunk::Trailers {
                    line: true,
                    cr: false,
                }
            }
        }
        s @ (Chunk::Data(_) | Chunk::Done) => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces cut at `cuts`; the body's length and
    /// whether it is complete.
    fn run(mut f: Framer, input: &[u8], cuts: &[usize]) -> Result<(usize, bool), BadBody> {
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(input.len());
        let mut at = 0;
        for end in bounds {
            let piece = &input[at..end];
            let step = f.advance(piece)?;
            at += step.used;
            if step.done {
                return Ok((at, true));
            }
            assert_eq!(step.used, piece.len(), "an open body takes all it is given");
        }
        Ok((at, f.is_done()))
    }

    #[test]
    fn lengths_and_chunks_end_where_they_say() {
        assert_eq!(run(Framer::length(5), b"helloGET", &[]), Ok((5, true)));
        assert_eq!(run(Framer::length(5), b"hel", &[]), Ok((3, false)));
        let body = b"5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        assert_eq!(
            run(Framer::chunked(), body, &[]),
            Ok((body.len() - 4, true))
        );
        assert_eq!(run(Framer::Close, body, &[]), Ok((body.len(), false)));
    }

    #[test]
    fn bad_chunks_are_refused_as_the_gate_refuses_them() {
        let cases: &[(&[u8], BadBody)] = &[
            (b"zz\r\n", BadBody::ChunkSize),
            (b"-1\r\n", BadBody::ChunkSize),
            (b"\r\n", BadBody::ChunkSize),
            (b"ffffffffffffffffff\r\n", BadBody::ChunkSize),
            (b"5 \r\nhello\r\n", BadBody::ChunkSize),
            (b"5\nhello\r\n", BadBody::BareLf),
            (b"5\r\nhelloX\r\n", BadBody::ChunkEnd),
            (b"0\r\nx: a\n\r\n", BadBody::BareLf),
            (b"0\r\n b\r\n\r\n", BadBody::ObsFold),
        ];
        for (body, want) in cases {
            assert_eq!(run(Framer::chunked(), body, &[]), Err(*want), "{body:?}");
        }
    }

    fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6),
            prop::bool::ANY,
            prop::bool::ANY,
        )
            .prop_map(|(chunks, ext, trailer)| {
                let mut out = Vec::new();
                for c in chunks {
                    out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                    if ext {
                        out.extend_from_slice(b";name=\"v\"");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if trailer {
                    out.extend_from_slice(b"x-sum: 1\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out
            })
    }

    /// What the gate (the reference for requests today) says of the same
    /// body after a chunked request head.
    fn gate_verdict(body: &[u8]) -> Result<(), crate::gate::Violation> {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut gate = crate::gate::Gate::new(8192, crate::gate::Switch::default());
        let mut out = bytes::BytesMut::new();
        gate.feed(&[&head[..], body].concat(), &mut out)
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_body_reads_as_one(
            body in chunked_body(),
            tail in prop::collection::vec(any::<u8>(), 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input = [&body[..], &tail[..]].concat();
            prop_assert_eq!(run(Framer::chunked(), &input, &[]), Ok((body.len(), true)));
            prop_assert_eq!(run(Framer::chunked(), &input, &cuts), Ok((body.len(), true)));
        }

        #[test]
        fn mutated_bodies_split_anyhow_agree_with_the_gate(
            body in chunked_body(),
            at in any::<usize>(),
            byte in any::<u8>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut body = body;
            let i = at % body.len();
            body[i] = byte;
            let whole = run(Framer::chunked(), &body, &[]);
            prop_assert_eq!(run(Framer::chunked(), &body, &cuts), whole);
            // Refused here exactly when the gate refuses it (the gate
            // reads what follows a complete body as the next request).
            let end = match whole { Ok((used, true)) => used, _ => body.len() };
            prop_assert_eq!(whole.is_err(), gate_verdict(&body[..end]).is_err(), "{:?}", whole);
        }

        #[test]
        fn lengths_split_anyhow(n in 0u64..100, input in prop::collection::vec(any::<u8>(), 0..120), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            let whole = run(Framer::length(n), &input, &[]);
            prop_assert_eq!(run(Framer::length(n), &input, &cuts), whole);
            let want = (n as usize).min(input.len());
            prop_assert_eq!(whole, Ok((want, want as u64 == n)));
        }
    }
}
