//! HTTP/1.1 connections, served by the node itself so that file bodies go out
//! with `sendfile(2)`: the kernel sends a segment from the page cache without
//! copying it through the process. hyper writes every body from memory; profiled
//! on segments, that copy was half of the node's CPU, and what nginx does not do.
//! Requests are parsed by httparse (hyper's own parser); the answer comes from
//! [`handler::answer`], as for HTTP/2.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::conns::Conn;
use crate::files::Body;
use crate::handler::{self, Payload, Sent};
use crate::node::Node;

/// Longest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A request body (odd on GET and HEAD) up to this size is read and dropped.
const MAX_DISCARD: u64 = 64 * 1024;
/// Bodies up to this size leave in the same write as the headers.
const COALESCE_MAX: usize = 16 * 1024;

/// A parsed request head.
struct Head {
    method: Method,
    /// The path of the request target, without the query.
    path: String,
    query: Option<String>,
    version: Version,
    headers: HeaderMap,
}

enum HeadError {
    /// The client closed (or reset) the connection between requests.
    Closed,
    Io(io::Error),
    /// Answered with a problem, then the connection is closed.
    Bad(StatusCode, &'static str),
}

/// Serves requests on one connection until the client closes it, asks to, or
/// the node drains (an idle connection closes at once, a busy one after its
/// response); an idle connection is also closed after `cfg.idle_timeout`, or when
/// the node needs its place for a new one.
pub async fn serve<W: Wire>(
    node: Arc<Node>,
    mut stream: W,
    peer: handler::Peer,
    conn: &Conn,
    drain: CancellationToken,
    cfg: headwater_serve::ServeConfig,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    loop {
        if buf.is_empty() {
            buf.reserve(4096);
            conn.idle();
            tokio::select! {
                biased;
                _ = drain.cancelled() => return Ok(()),
                _ = conn.close.cancelled() => return Ok(()),
                _ = tokio::time::sleep(cfg.idle_timeout) => return Ok(()),
                n = stream.read_buf(&mut buf) => if n? == 0 { return Ok(()) },
            }
        }
        conn.busy();
        let head = match tokio::time::timeout(cfg.header_read_timeout, read_head(&mut stream, &mut buf)).await {
            Ok(Ok(head)) => head,
            Err(_) | Ok(Err(HeadError::Closed)) => return Ok(()),
            Ok(Err(HeadError::Io(e))) => return Err(e),
            Ok(Err(HeadError::Bad(status, detail))) => {
                return finish(&mut stream, &mut out, refused(status, detail), Version::HTTP_11).await;
            }
        };
        if let Err((status, detail)) = discard_body(&mut stream, &mut buf, &head.headers).await? {
            return finish(&mut stream, &mut out, refused(status, detail), head.version).await;
        }
        let res = handler::answer(&node, peer, &head.method, &head.path, head.query.as_deref(), &head.headers).await;
        let keep = keep_alive(&head) && !drain.is_cancelled();
        let bodiless = head.method == Method::HEAD;
        write_response(&mut stream, &mut out, res, bodiless, head.version, keep).await?;
        if !keep {
            return stream.close().await;
        }
    }
}

/// Reads until a whole request head is buffered, and parses it.
async fn read_head<W: Wire>(stream: &mut W, buf: &mut BytesMut) -> Result<Head, HeadError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = to_head(&req)?;
                    buf.advance(n);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(HeadError::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HeadError::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers"));
                }
                Err(_) => return Err(HeadError::Bad(StatusCode::BAD_REQUEST, "malformed request")),
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn to_head(req: &httparse::Request<'_, '_>) -> Result<Head, HeadError> {
    let bad = |detail| HeadError::Bad(StatusCode::BAD_REQUEST, detail);
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| bad("invalid method"))?;
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let target = req.path.unwrap_or_default();
    let (path, query) = if target.starts_with('/') {
        match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        }
    } else {
        // absolute-form (`http://host/path`), or `*`.
        let uri: http::Uri = target.parse().map_err(|_| bad("invalid request target"))?;
        (uri.path().to_owned(), uri.query().map(str::to_owned))
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Head { method, path, query, version, headers })
}

/// Reads and drops a request body; `Err` (answered, then the connection closes)
/// for a chunked one or one too large.
async fn discard_body<W: Wire>(
    stream: &mut W,
    buf: &mut BytesMut,
    headers: &HeaderMap,
) -> io::Result<Result<(), (StatusCode, &'static str)>> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(Err((StatusCode::BAD_REQUEST, "request bodies are not accepted")));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else { return Ok(Ok(())) };
    if lengths.next().is_some() {
        // Two lengths: where this request ends is ambiguous (request smuggling).
        return Ok(Err((StatusCode::BAD_REQUEST, "more than one Content-Length")));
    }
    // Digits only: `+33` or ` 33` would be read differently by another parser.
    let digits = length.as_bytes();
    let parsed = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten();
    let Some(mut left) = parsed else {
        return Ok(Err((StatusCode::BAD_REQUEST, "invalid Content-Length")));
    };
    if left > MAX_DISCARD {
        return Ok(Err((StatusCode::PAYLOAD_TOO_LARGE, "request bodies are not accepted")));
    }
    loop {
        let n = left.min(buf.len() as u64) as usize;
        buf.advance(n);
        left -= n as u64;
        if left == 0 {
            return Ok(Ok(()));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked.
fn keep_alive(head: &Head) -> bool {
    let has = |token: &str| {
        head.headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if head.version == Version::HTTP_10 { has("keep-alive") } else { !has("close") }
}

/// A request refused before it reached the handler.
fn refused(status: StatusCode, detail: &str) -> Response<Payload> {
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header-too-large",
        StatusCode::SERVICE_UNAVAILABLE => "busy",
        _ => "bad-request",
    };
    headwater_serve::problem(status, kind, detail).map(Payload::Full)
}

/// Refuses a connection the node has no room for (every open one is busy): 503
/// with `Retry-After`, then the connection is closed.
pub async fn refuse_busy<W: Wire>(mut stream: W) {
    let mut res = refused(StatusCode::SERVICE_UNAVAILABLE, "the node is at its connection limit; try again");
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let mut out = Vec::with_capacity(512);
    let _ = finish(&mut stream, &mut out, res, Version::HTTP_11).await;
}

/// Answers, then closes the connection.
async fn finish<W: Wire>(
    stream: &mut W,
    out: &mut Vec<u8>,
    res: Response<Payload>,
    version: Version,
) -> io::Result<()> {
    write_response(stream, out, res, false, version, false).await?;
    stream.close().await
}

async fn write_response<W: Wire>(
    stream: &mut W,
    out: &mut Vec<u8>,
    res: Response<Payload>,
    bodiless: bool,
    version: Version,
    keep: bool,
) -> io::Result<()> {
    let (parts, payload) = res.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    date(out);
    let no_body = bodiless || status == StatusCode::NOT_MODIFIED || status == StatusCode::NO_CONTENT;
    if let Payload::Full(b) = &payload
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && status != StatusCode::NOT_MODIFIED
        && status != StatusCode::NO_CONTENT
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match payload {
        Payload::Full(b) if no_body || b.is_empty() => stream.send(out, false).await,
        Payload::Full(b) if b.len() <= COALESCE_MAX => {
            out.extend_from_slice(&b);
            stream.send(out, false).await
        }
        Payload::Full(b) => {
            stream.send(out, true).await?;
            stream.send(&b, false).await
        }
        Payload::Content(mut sent, body) => send_body(stream, out, &mut sent, body).await,
    }
}

/// Sends a content body after the head in `out`, each piece once the shaper
/// grants it: files by `sendfile`, the rest by `write`.
async fn send_body<W: Wire>(stream: &mut W, out: &mut Vec<u8>, sent: &mut Sent, body: Body) -> io::Result<()> {
    match body {
        Body::Cached(b) if b.len() <= COALESCE_MAX => {
            // Small (a playlist): granted in one piece, sent with the head.
            let mut b = b;
            while !b.is_empty() {
                let piece = b.split_to(sent.grant(b.len()).await);
                out.extend_from_slice(&piece);
                sent.record(piece.len());
            }
            stream.send(out, false).await
        }
        Body::Cached(b) => {
            stream.send(out, true).await?;
            write_pieces(stream, sent, b).await
        }
        Body::File { file, offset, len } => {
            stream.send(out, true).await?;
            let (mut at, end) = (offset, offset + len);
            while at < end {
                let n = sent.grant(usize::try_from(end - at).unwrap_or(usize::MAX)).await;
                stream.send_file(&file, at, n).await?;
                sent.record(n);
                at += n as u64;
            }
            Ok(())
        }
        Body::Stream(mut chunks) => {
            stream.send(out, true).await?;
            while let Some(chunk) = chunks.next().await {
                write_pieces(stream, sent, chunk.map_err(io::Error::other)?).await?;
            }
            Ok(())
        }
    }
}

async fn write_pieces<W: Wire>(stream: &mut W, sent: &mut Sent, mut b: Bytes) -> io::Result<()> {
    while !b.is_empty() {
        let piece = b.split_to(sent.grant(b.len()).await);
        stream.send(&piece, false).await?;
        sent.record(piece.len());
    }
    Ok(())
}

/// Where a connection's bytes go: a plain socket (heads and small bodies by
/// `send`, files by `sendfile`) or TLS (every byte encrypted in the process:
/// these kernels have no kTLS, so files are read and written like nginx's
/// with `sendfile` off for TLS).
pub trait Wire: AsyncRead + Unpin + Send {
    /// Writes all of `bytes`; with `more`, what follows goes out with them.
    fn send(&mut self, bytes: &[u8], more: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Sends `len` bytes of `file` from `offset`.
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the connection (a TLS close_notify first).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Wire for TcpStream {
    /// With `more`, the kernel holds a partial packet for what follows
    /// (`MSG_MORE`), so a head and its body leave together.
    async fn send(&mut self, bytes: &[u8], more: bool) -> io::Result<()> {
        // nix names no MSG_MORE; it is Linux's flag.
        let more = if more { MsgFlags::from_bits_retain(nix::libc::MSG_MORE) } else { MsgFlags::empty() };
        let flags = more | MsgFlags::MSG_NOSIGNAL;
        let mut done = 0;
        while done < bytes.len() {
            done += self
                .async_io(Interest::WRITABLE, || {
                    nix::sys::socket::send(self.as_raw_fd(), &bytes[done..], flags).map_err(io::Error::from)
                })
                .await?;
        }
        Ok(())
    }

    /// By `sendfile(2)`, from the page cache.
    async fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
        let mut at = i64::try_from(offset).map_err(io::Error::other)?;
        let mut left = len;
        while left > 0 {
            let n = self
                .async_io(Interest::WRITABLE, || {
                    let mut off = at;
                    nix::sys::sendfile::sendfile(&*self, file, Some(&mut off), left).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                // The file is shorter than its metadata said: the response cannot be finished.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += n as i64;
            left -= n;
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        self.shutdown().await
    }
}

/// How much of a file one read takes on its way into TLS records.
const TLS_FILE_CHUNK: usize = 64 * 1024;

impl Wire for tokio_rustls::server::TlsStream<TcpStream> {
    async fn send(&mut self, bytes: &[u8], more: bool) -> io::Result<()> {
        self.write_all(bytes).await?;
        if !more {
            self.flush().await?;
        }
        Ok(())
    }

    /// Read from the page cache (`pread`, a local file) into records.
    async fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut chunk = vec![0u8; len.min(TLS_FILE_CHUNK)];
        let (mut at, mut left) = (offset, len);
        while left > 0 {
            let want = left.min(chunk.len());
            let n = file.read_at(&mut chunk[..want], at)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.write_all(&chunk[..n]).await?;
            at += n as u64;
            left -= n;
        }
        self.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.shutdown().await
    }
}

/// Appends a `date` header, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}
