//! Serving gRPC clients that send a Unix socket's path as the HTTP/2 `:authority`.
//!
//! The HTTP/2 library under tonic (h2) resets every stream whose `:authority` is not a valid URI
//! authority with `PROTOCOL_ERROR`, before any server code sees the request, and has no setting
//! to relax that (hyperium/h2 pull request 487, open). Several clients we must serve send
//! exactly such a value on a Unix socket:
//!
//! - kubelet before 1.26 dials its plugins with the bare socket path, so gRPC-Go's passthrough
//!   resolver makes that path the authority: both the plugin registration socket and the CSI
//!   socket (kubernetes/kubernetes pkg/kubelet/pluginmanager/operationexecutor/
//!   operation_generator.go and pkg/volume/csi/csi_client.go; fixed by setting `localhost` in
//!   kubernetes/kubernetes#112597, released in 1.26);
//! - gRPC C-core (Python, C++, Ruby), which sends the path, percent-encoded since 1.57, and
//!   grpc-java, which sends the path.
//!
//! [`AuthorityRepair`] sits between the socket and h2 on the client-to-server direction: it
//! reads the HTTP/2 frames, decodes each header block (HPACK, with the client's dynamic table),
//! replaces an `:authority` that is not a valid authority with `localhost` (what gRPC-Go sends
//! when it dials `unix:`), and encodes the block again for h2 with a table of its own. Every other
//! frame, and every header block with a valid authority, reaches h2 unchanged in content. The
//! server-to-client direction is untouched. The authority means nothing on a Unix socket: no
//! handler of ours reads it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The authority given to requests whose own one h2 would refuse.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 section 6.5.2), which h2 keeps: frames
/// this layer writes are never larger.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (h2's default limit on the header list is 16 KiB of
/// decoded headers) is refused rather than buffered without end.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// A server connection that repairs invalid `:authority` values; see the module documentation.
pub struct AuthorityRepair<T = UnixStream> {
    inner: T,
    rewriter: Rewriter,
    /// Bytes read from `inner` and not yet taken apart into frames.
    input: Vec<u8>,
    /// Bytes ready for h2.
    output: Vec<u8>,
    /// How much of `output` h2 has read.
    taken: usize,
    eof: bool,
}

impl<T> std::fmt::Debug for AuthorityRepair<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRepair")
            .field("buffered", &self.input.len())
            .field("ready", &(self.output.len() - self.taken))
            .finish_non_exhaustive()
    }
}

impl<T> AuthorityRepair<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            input: Vec::new(),
            output: Vec::new(),
            taken: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRepair<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.taken);
                buf.put_slice(&this.output[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.output.len() {
                    this.output.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is an incomplete frame: h2 sees the connection end as it would.
                let rest = std::mem::take(&mut this.input);
                this.output = rest;
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(read.filled());
            let consumed = this.rewriter.feed(&this.input, &mut this.output)?;
            this.input.drain(..consumed);
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for AuthorityRepair<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    /// The socket's own: peer credentials still reach the handlers ([`crate::unix::peer_uid`]).
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The frame-by-frame state of one connection's client-to-server bytes.
struct Rewriter {
    preface_done: bool,
    /// The client's HPACK context, mirrored.
    decoder: loona_hpack::Decoder<'static>,
    /// Ours towards h2 (its decoder mirrors this one).
    encoder: loona_hpack::Encoder<'static>,
    /// A header block being collected across HEADERS and CONTINUATION frames.
    pending: Option<PendingBlock>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            preface_done: false,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            pending: None,
        }
    }
}

struct PendingBlock {
    stream: [u8; 4],
    end_stream: bool,
    /// The PRIORITY fields of the HEADERS frame, kept as they came.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

fn protocol_error(message: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {message}"),
    )
}

impl Rewriter {
    /// Takes the complete frames at the start of `input` apart, appends what h2 should see to
    /// `output`, and returns how many bytes of `input` it used (an incomplete frame waits).
    fn feed(&mut self, input: &[u8], output: &mut Vec<u8>) -> io::Result<usize> {
        let mut at = 0;
        if !self.preface_done {
            if input.len() < PREFACE.len() {
                return Ok(0);
            }
            // Not HTTP/2 with prior knowledge: pass it on for h2 to refuse.
            output.extend_from_slice(&input[..PREFACE.len()]);
            at = PREFACE.len();
            self.preface_done = true;
        }
        while input.len() - at >= FRAME_HEADER_LEN {
            let header = &input[at..at + FRAME_HEADER_LEN];
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if input.len() - at - FRAME_HEADER_LEN < length {
                break;
            }
            let (kind, flags) = (header[3], header[4]);
            let stream: [u8; 4] = header[5..9].try_into().expect("four bytes");
            let payload = &input[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + length];
            match kind {
                HEADERS => self.headers(flags, stream, payload, output)?,
                CONTINUATION if self.pending.is_some() => {
                    self.continuation(flags, stream, payload, output)?
                }
                _ if self.pending.is_some() => {
                    return Err(protocol_error("a frame inside a header block"));
                }
                _ => output.extend_from_slice(&input[at..at + FRAME_HEADER_LEN + length]),
            }
            at += FRAME_HEADER_LEN + length;
        }
        Ok(at)
    }

    fn headers(
        &mut self,
        flags: u8,
        stream: [u8; 4],
        payload: &[u8],
        output: &mut Vec<u8>,
    ) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(protocol_error("HEADERS inside a header block"));
        }
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let (&len, rest) = body
                .split_first()
                .ok_or_else(|| protocol_error("PADDED HEADERS without a pad length"))?;
            pad = usize::from(len);
            body = rest;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            if body.len() < 5 {
                return Err(protocol_error("PRIORITY HEADERS too short"));
            }
            priority = Some(body[..5].try_into().expect("five bytes"));
            body = &body[5..];
        }
        if pad > body.len() {
            return Err(protocol_error("padding longer than the frame"));
        }
        self.pending = Some(PendingBlock {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            block: body[..body.len() - pad].to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish(output)?;
        }
        Ok(())
    }

    fn continuation(
        &mut self,
        flags: u8,
        stream: [u8; 4],
        payload: &[u8],
        output: &mut Vec<u8>,
    ) -> io::Result<()> {
        let pending = self.pending.as_mut().expect("a block is pending");
        if pending.stream != stream {
            return Err(protocol_error("CONTINUATION of another stream"));
        }
        pending.block.extend_from_slice(payload);
        if pending.block.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("header block too large"));
        }
        if flags & END_HEADERS != 0 {
            self.finish(output)?;
        }
        Ok(())
    }

    /// Decodes the complete block, repairs the authority, and writes it again as one HEADERS
    /// frame (with CONTINUATION frames if it is larger than a frame).
    fn finish(&mut self, output: &mut Vec<u8>) -> io::Result<()> {
        let pending = self.pending.take().expect("a block is pending");
        let mut headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| protocol_error(&format!("HPACK: {e}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                *value = REPLACEMENT_AUTHORITY.as_bytes().to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = Vec::with_capacity(block.len() + 5);
        let mut flags = if pending.end_stream { END_STREAM } else { 0 };
        if let Some(priority) = pending.priority {
            first.extend_from_slice(&priority);
            flags |= PRIORITY;
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame(output, HEADERS, flags, pending.stream, &first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            write_frame(output, CONTINUATION, flags, pending.stream, chunk);
        }
        Ok(())
    }
}

fn write_frame(output: &mut Vec<u8>, kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]) {
    let len = payload.len();
    output.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    output.extend_from_slice(&stream);
    output.extend_from_slice(payload);
}

/// Whether h2 takes `value` as an authority (it parses it as `http::uri::Authority`).
fn valid_authority(value: &[u8]) -> bool {
    ::http::uri::Authority::try_from(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, flags, stream.to_be_bytes(), payload);
        out
    }

    /// The frames of `bytes` after the preface: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().expect("four bytes"));
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/pluginregistration.Registration/GetInfo"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Runs `input` through a rewriter in pieces of `step` bytes, as reads would bring it.
    fn rewrite(input: &[u8], step: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::default();
        let (mut pending, mut output) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            let used = rewriter.feed(&pending, &mut output).expect("valid HTTP/2");
            pending.drain(..used);
        }
        assert!(pending.is_empty(), "{} bytes left over", pending.len());
        output
    }

    fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, v) = headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .expect(":authority");
        String::from_utf8(v.clone()).expect("UTF-8")
    }

    #[test]
    fn the_authorities_h2_refuses_are_those_of_unix_socket_clients() {
        // What kubelet before 1.26 and grpc-java send, and C-core's percent-encoding of it.
        assert!(!valid_authority(
            b"/var/lib/kubelet/plugins_registry/topolvm.io-reg.sock"
        ));
        assert!(!valid_authority(b"%2Frun%2Ftopolvm%2Flvmd.sock"));
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:8080"));
    }

    #[test]
    fn a_socket_path_becomes_localhost_and_everything_else_stays() {
        // Two requests on one connection, as gRPC-Go sends them: the second refers to the
        // client's dynamic table, so the decoder must follow the client's context.
        let path = "/var/lib/kubelet/plugins/topolvm.io/node/csi-topolvm.sock";
        let mut client = loona_hpack::Encoder::new();
        let first = encode(&mut client, &request(path));
        let second = encode(&mut client, &request(path));
        assert!(
            second.len() < first.len(),
            "the second block uses the dynamic table"
        );
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        let settings = frame(0x4, 0, 0, &[]);
        // The first block split over HEADERS (padded, with priority) and a CONTINUATION.
        let (a, b) = first.split_at(first.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0x80, 0, 0, 0, 16]);
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(settings.clone());
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(data.clone());
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));

        for step in [1, 7, 4096] {
            let out = frames(&rewrite(&input, step));
            assert_eq!(out.len(), 4, "step {step}");
            assert_eq!(
                (out[0].0, out[0].3.as_slice()),
                (0x4, &[][..]),
                "SETTINGS unchanged"
            );
            assert_eq!(
                out[2],
                (0x0, END_STREAM, 1, data[9..].to_vec()),
                "DATA unchanged"
            );
            let mut server = loona_hpack::Decoder::new();
            let (kind, flags, stream, payload) = &out[1];
            assert_eq!(
                (*kind, *flags, *stream),
                (HEADERS, PRIORITY | END_HEADERS, 1)
            );
            assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 16], "priority kept");
            let headers = server.decode(&payload[5..]).expect("h2 can decode it");
            assert_eq!(authority_of(&headers), REPLACEMENT_AUTHORITY);
            let mut expected = request(path);
            expected[3].1 = b"localhost".to_vec();
            assert_eq!(headers, expected, "every other header as sent");
            let (kind, flags, stream, payload) = &out[3];
            assert_eq!(
                (*kind, *flags, *stream),
                (HEADERS, END_HEADERS | END_STREAM, 3)
            );
            assert_eq!(server.decode(payload).expect("decodes"), expected);
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let block = encode(&mut client, &request("localhost"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let out = frames(&rewrite(&input, 4096));
        let headers = loona_hpack::Decoder::new()
            .decode(&out[0].3)
            .expect("decodes");
        assert_eq!(headers, request("localhost"));
    }

    #[test]
    fn a_block_larger_than_a_frame_goes_out_in_continuations() {
        let mut headers = request("/run/x.sock");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut loona_hpack::Encoder::new(), &headers);
        let mut input = PREFACE.to_vec();
        // The client may use larger frames only if allowed; split it the way a client must.
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        input.extend(frame(HEADERS, 0, 1, chunks.next().expect("a first chunk")));
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            input.extend(frame(CONTINUATION, flags, 1, chunk));
        }
        let out = frames(&rewrite(&input, 1000));
        assert!(out.len() >= 3);
        assert!(out.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(out.last().expect("frames").1 & END_HEADERS, END_HEADERS);
        let block: Vec<u8> = out.iter().flat_map(|f| f.3.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&block).expect("decodes");
        assert_eq!(authority_of(&decoded), "localhost");
        assert_eq!(decoded.last().expect("headers").1.len(), 40_000);
    }

    #[test]
    fn broken_framing_is_an_error_not_a_guess() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, b"\x82"));
        input.extend(frame(0x0, 0, 1, b"data inside a header block"));
        let mut output = Vec::new();
        assert!(Rewriter::default().feed(&input, &mut output).is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"));
        assert!(Rewriter::default().feed(&input, &mut output).is_err());
    }
}
