//! Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//!
//! This is the reference implementation's framing, kept so its clients can still talk to us,
//! with what it lacked: a cap on the length, checked before any allocation. A reader that
//! meets an oversized length returns [`FrameError::TooLarge`] without reading the body; the
//! caller answers with a `too_large` error frame and closes the connection, because the
//! stream can no longer be resynchronised.
//!
//! The functions are generic over [`AsyncRead`] and [`AsyncWrite`], so tests run on
//! [`tokio::io::duplex`]. Partial reads and writes are handled by `read_exact` and
//! `write_all`; callers put their own timeouts around them.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 4;

/// Default maximum body size: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more bytes than the cap allows. Nothing was allocated and
    /// the body was not read; the connection must be closed.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: u64,
        /// The cap in force.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes the header (or the header itself) announced.
        expected: usize,
        /// Bytes that arrived before the end of the stream.
        got: usize,
    },
    /// Any other I/O failure.
    #[error("i/o error on frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body.
///
/// Returns `Ok(None)` on a clean end of stream (the peer closed between frames).
///
/// # Errors
///
/// [`FrameError::TooLarge`] when the announced length exceeds `max` (checked before any
/// allocation), [`FrameError::Truncated`] when the stream ends mid-frame, and
/// [`FrameError::Io`] otherwise.
pub async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match read_header(reader, max).await? {
        None => Ok(None),
        Some(len) => read_body(reader, len).await.map(Some),
    }
}

/// Reads one frame header: the body's length, checked against `max`. `Ok(None)` on a clean
/// end of stream. With [`read_body`], what [`read_frame`] does, for a caller that decides
/// between the two (for example, waits until it may take in that many bytes).
///
/// # Errors
///
/// As for [`read_frame`].
pub async fn read_header<R>(reader: &mut R, max: usize) -> Result<Option<usize>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated {
                    expected: HEADER_LEN,
                    got,
                })
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len as u64 > max as u64 {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(Some(len as usize))
}

/// Reads a frame body of `len` bytes (from [`read_header`]).
///
/// # Errors
///
/// [`FrameError::Truncated`] when the stream ends first, [`FrameError::Io`] otherwise.
pub async fn read_body<R>(reader: &mut R, len: usize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    // A large body gets its whole buffer at once: growing it by doubling would leave the
    // smaller buffers behind, resident in the allocator, and cost about twice the frame. A
    // peer that announces a large frame and sends little of it still costs little memory:
    // a fresh allocation of this size is mapped, not touched, and only the pages the bytes
    // arrive in become resident.
    let mut body = Vec::with_capacity(len);
    let mut limited = reader.take(len as u64);
    while body.len() < len {
        if limited.read_buf(&mut body).await? == 0 {
            return Err(FrameError::Truncated {
                expected: len,
                got: body.len(),
            });
        }
    }
    Ok(body)
}

/// Writes one frame (header and body) and flushes.
///
/// # Errors
///
/// [`FrameError::TooLarge`] when `body` exceeds `max` (nothing is written), and
/// [`FrameError::Io`] when the write fails.
pub async fn write_frame<W>(writer: &mut W, body: &[u8], max: usize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let buf = encode_frame(body, max)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// Encodes a frame into one buffer, so it can go out in a single write.
///
/// # Errors
///
/// [`FrameError::TooLarge`] when `body` exceeds `max` or `u32::MAX`.
pub fn encode_frame(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    build_frame(max, |buf| buf.extend_from_slice(body))
}

/// Builds a frame in one buffer: `write_body` appends the body after room for the header,
/// which is then filled in. A large body (a page of rows) is written once, where
/// [`encode_frame`] of an encoded body would copy it again.
///
/// # Errors
///
/// [`FrameError::TooLarge`] when the body is over `max` bytes.
pub fn build_frame(
    max: usize,
    write_body: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0; HEADER_LEN];
    write_body(&mut buf);
    let body_len = buf.len() - HEADER_LEN;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|len| *len as usize <= max)
        .ok_or(FrameError::TooLarge {
            len: body_len as u64,
            max,
        })?;
    buf[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn frame_round_trips_and_clean_eof_is_none() {
        let (mut a, mut b) = duplex(64);
        let writer = tokio::spawn(async move {
            for body in [&b"{}"[..], b"", &[b'x'; 1000][..]] {
                write_frame(&mut a, body, DEFAULT_MAX_FRAME).await.unwrap();
            }
        });
        // The 64-byte pipe forces partial reads and writes for the 1000-byte body.
        assert_eq!(
            read_frame(&mut b, DEFAULT_MAX_FRAME)
                .await
                .unwrap()
                .unwrap(),
            b"{}"
        );
        assert_eq!(
            read_frame(&mut b, DEFAULT_MAX_FRAME)
                .await
                .unwrap()
                .unwrap(),
            b""
        );
        let big = read_frame(&mut b, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(big, vec![b'x'; 1000]);
        writer.await.unwrap();
        assert!(read_frame(&mut b, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_the_body_arrives() {
        // Only the header is ever sent, and the writer keeps the pipe open: if the reader
        // tried to allocate and read 4 GiB it would hang, not return.
        let (mut a, mut b) = duplex(16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b, DEFAULT_MAX_FRAME).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == u64::from(u32::MAX) && max == DEFAULT_MAX_FRAME)
        );
        drop(a);
    }

    #[tokio::test]
    async fn cap_is_configurable_and_inclusive() {
        let (mut a, mut b) = duplex(64);
        write_frame(&mut a, b"0123456789", 10).await.unwrap();
        assert_eq!(
            read_frame(&mut b, 10).await.unwrap().unwrap(),
            b"0123456789"
        );
        write_frame(&mut a, b"0123456789", 10).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 9).await,
            Err(FrameError::TooLarge { len: 10, .. })
        ));
        assert!(matches!(
            write_frame(&mut a, b"0123456789", 9).await,
            Err(FrameError::TooLarge { len: 10, max: 9 })
        ));
    }

    #[tokio::test]
    async fn a_body_larger_than_the_first_buffer_arrives_whole() {
        // 300 KB through a 4 KiB pipe: the buffer grows several times while bytes trickle in.
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut a, mut b) = duplex(4096);
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &sent, DEFAULT_MAX_FRAME).await.unwrap();
            a.write_all(&[0, 0]).await.unwrap();
        });
        let got = read_frame(&mut b, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, body);
        writer.await.unwrap();
        assert!(matches!(
            read_frame(&mut b, DEFAULT_MAX_FRAME).await,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors() {
        let (mut a, mut b) = duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, DEFAULT_MAX_FRAME).await,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));

        let (mut a, mut b) = duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, DEFAULT_MAX_FRAME).await,
            Err(FrameError::Truncated {
                expected: 10,
                got: 3
            })
        ));
    }
}
