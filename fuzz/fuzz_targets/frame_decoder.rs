//! The frame decoder (`fold_ipc::frame::read_frame`) over an in-memory stream.
//!
//! Input: byte 0 picks the size cap, byte 1 how many bytes each read returns (partial reads),
//! the rest is the stream. Frames are read until the stream ends or an error, and every
//! outcome is checked against what the bytes say: bodies are exactly the announced bytes and
//! never over the cap, `TooLarge` only for a header over the cap, `Truncated` only when the
//! stream ends inside a frame, a clean end only between frames.
#![no_main]

use fold_ipc::frame::{encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

const CAPS: [usize; 8] = [0, 1, 2, 16, 255, 4096, 65_536, DEFAULT_MAX_FRAME];

/// Hands out the stream at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (an in-memory reader is always ready).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let [cap, chunk, stream @ ..] = input else {
        return;
    };
    let max = CAPS[usize::from(*cap) % CAPS.len()];
    let chunk = usize::from(*chunk % 17).max(1) * if *chunk >= 128 { 4096 } else { 1 };
    let mut reader = Chunked {
        data: stream,
        chunk,
    };
    let mut pos = 0usize;
    loop {
        let rest = &stream[pos..];
        let outcome = block_on(read_frame(&mut reader, max));
        let announced = rest
            .get(..HEADER_LEN)
            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
        match outcome {
            Ok(None) => {
                assert!(rest.is_empty(), "clean end with {} bytes left", rest.len());
                break;
            }
            Ok(Some(body)) => {
                let len = announced.expect("a frame without a whole header");
                assert!(len <= max, "body of {len} bytes over the cap {max}");
                assert_eq!(body.len(), len);
                assert_eq!(&body[..], &rest[HEADER_LEN..HEADER_LEN + len]);
                pos += HEADER_LEN + len;
            }
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!(m, max);
                assert_eq!(Some(len as usize), announced);
                assert!(len as usize > max);
                break;
            }
            Err(FrameError::Truncated { expected, got }) => {
                assert!(got < expected);
                match announced {
                    None => assert_eq!((expected, got), (HEADER_LEN, rest.len())),
                    Some(len) => {
                        assert!(len <= max);
                        assert_eq!((expected, got), (len, rest.len() - HEADER_LEN));
                    }
                }
                break;
            }
            Err(FrameError::Io(e)) => panic!("an in-memory reader cannot fail: {e}"),
        }
    }

    // Encoding round-trips whatever fits under the cap, and refuses the rest.
    match encode_frame(stream, max) {
        Ok(frame) => {
            assert!(stream.len() <= max);
            let mut reader = Chunked {
                data: &frame,
                chunk,
            };
            let body = block_on(read_frame(&mut reader, max));
            assert_eq!(body.ok().flatten().as_deref(), Some(stream));
        }
        Err(FrameError::TooLarge { .. }) => assert!(stream.len() > max),
        Err(e) => panic!("encoding failed: {e}"),
    }
});
