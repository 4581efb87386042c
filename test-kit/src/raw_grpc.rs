//! A deliberately minimal gRPC client written frame by frame, to send what other gRPC
//! implementations send and tonic cannot: any `:authority`, including a Unix socket path, which
//! gRPC C-core (Python, C++, Ruby) and grpc-java put there when they dial `unix:` targets.
//!
//! It speaks just enough HTTP/2 (RFC 9113) for one unary call on stream 1: the preface, an empty
//! SETTINGS, one HEADERS frame whose HPACK block (RFC 7541) uses only static-table indexes and
//! literals without indexing, and one DATA frame. It does not decode the server's header blocks;
//! a gRPC server sends DATA for a unary call only with a successful answer, so the messages it
//! collects are the answer.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const STREAM: u32 = 1;

/// What the server did with the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ended normally; the gRPC messages of the answer (empty: an error status).
    Answered { messages: Vec<Vec<u8>> },
    /// The server reset the stream with this HTTP/2 error code (1 is PROTOCOL_ERROR).
    Reset { error_code: u32 },
    /// The server closed the connection (GOAWAY or EOF) before the stream ended.
    Closed,
}

/// HTTP/2's PROTOCOL_ERROR code.
pub const PROTOCOL_ERROR: u32 = 0x1;

/// Calls the unary method `path` (`/package.Service/Method`) on the server at `socket` with the
/// encoded protobuf `request`, sending `authority` as `:authority`.
pub async fn unary_call(
    socket: &Path,
    authority: &str,
    path: &str,
    request: &[u8],
) -> std::io::Result<Outcome> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static indexes 3 and 6)
    literal_indexed_name(&mut block, 4, path.as_bytes()); // :path
    literal_indexed_name(&mut block, 1, authority.as_bytes()); // :authority
    literal_indexed_name(&mut block, 31, b"application/grpc"); // content-type
    block.push(0x00); // a literal without indexing, new name
    string(&mut block, b"te");
    string(&mut block, b"trailers");
    frame(&mut out, HEADERS, END_HEADERS, STREAM, &block);
    let mut message = vec![0u8];
    let len = u32::try_from(request.len()).map_err(std::io::Error::other)?;
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(request);
    frame(&mut out, DATA, END_STREAM, STREAM, &message);
    stream.write_all(&out).await?;

    tokio::time::timeout(Duration::from_secs(10), read_outcome(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

async fn read_outcome(stream: &mut UnixStream) -> std::io::Result<Outcome> {
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(Outcome::Closed);
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                stream.write_all(&ack).await?;
            }
            GOAWAY => return Ok(Outcome::Closed),
            RST_STREAM if id == STREAM && payload.len() == 4 => {
                let error_code =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                return Ok(Outcome::Reset { error_code });
            }
            DATA | HEADERS if id == STREAM => {
                if kind == DATA {
                    data.extend_from_slice(unpadded(flags, &payload));
                }
                if flags & END_STREAM != 0 {
                    return Ok(Outcome::Answered {
                        messages: split_messages(&data),
                    });
                }
            }
            _ => {}
        }
    }
}

/// A DATA frame's payload without its padding.
fn unpadded(flags: u8, payload: &[u8]) -> &[u8] {
    if flags & PADDED == 0 {
        return payload;
    }
    match payload.split_first() {
        Some((&pad, rest)) => &rest[..rest.len().saturating_sub(usize::from(pad))],
        None => payload,
    }
}

/// Splits gRPC's length-prefixed messages.
fn split_messages(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let end = (5 + len).min(data.len());
        messages.push(data[5..end].to_vec());
        data = &data[end..];
    }
    messages
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// A literal header field without indexing whose name is static-table entry `index`.
fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    integer(out, 0x00, 4, index);
    string(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_rfc_7541_appendix_c1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn literal_without_indexing_as_rfc_7541_appendix_c2_2() {
        // C.2.2: `:path: /sample/path`, literal without indexing, indexed name 4.
        let mut out = Vec::new();
        literal_indexed_name(&mut out, 4, b"/sample/path");
        assert_eq!(
            out,
            [
                0x04, 0x0c, 0x2f, 0x73, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2f, 0x70, 0x61, 0x74, 0x68
            ]
        );
    }
}
