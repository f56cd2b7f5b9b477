//! etcd's KV calls (Range, Put, DeleteRange, Txn, Compact) served one request, one answer, without
//! tonic's streaming codec.
//!
//! Every KV call is unary, yet tonic serves it as a stream of one: a decoder over the request
//! body with a buffer of its own the message is copied into, an encoder stream and a boxed body
//! for the answer, tower's `Oneshot` around the call, and the generated service's boxed future
//! inside that. Here the request's body is read until its one message is whole, not to its end (a
//! put arrives in one HTTP/2 DATA frame, which is then decoded in place, not copied), the handler
//! is called, and its answer is encoded once into a buffer of exactly its size, sent as one DATA
//! frame and the `grpc-status` trailer.
//! At 256-client puts tonic's layers (`tonic::`, `tower::`, `http_body_util`) held about 4% of the
//! members' CPU samples (docs/BENCHMARKS.md, eighth pass).
//!
//! What the client sees is what tonic answered: the same headers and trailers, a refused request
//! the same status codes (a message over the limit is OutOfRange "decoded message length too
//! large", grpc-go says ResourceExhausted), an error from the handler a trailers-only answer.
//! Compressed requests are refused (Unimplemented), as tonic refused them without its
//! compression features.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::client_server::{Answer, Request, Response};
use crate::pb::etcdserverpb::kv_server::Kv;

/// A gRPC message's prefix: a compression flag and a big-endian length.
pub const PREFIX_BYTES: usize = 5;

/// The KV service `S` called without tonic's codec: a route of [`crate::client_server::Dispatch`],
/// or the whole of the load generator's no-op server.
pub struct KvCalls<S> {
    /// The service the calls go to.
    service: Arc<S>,
    /// Largest request message accepted, in bytes (etcd's request limit plus gRPC's overhead).
    max_message_bytes: usize,
}

impl<S> Clone for KvCalls<S> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), max_message_bytes: self.max_message_bytes }
    }
}

impl<S: Kv> KvCalls<S> {
    /// Serves `service`, refusing request messages over `max_message_bytes`.
    pub fn new(service: S, max_message_bytes: usize) -> Self {
        Self { service: Arc::new(service), max_message_bytes }
    }
}

impl<S: Kv> hyper::service::Service<Request> for KvCalls<S> {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, request: Request) -> Answer {
        let kv = self.service.clone();
        let max = self.max_message_bytes;
        let method = request.uri().path().strip_prefix("/etcdserverpb.KV/").unwrap_or_default();
        match method {
            "Range" => Box::pin(unary(request, max, move |r| async move { kv.range(r).await })),
            "Put" => Box::pin(unary(request, max, move |r| async move { kv.put(r).await })),
            "DeleteRange" => Box::pin(unary(request, max, move |r| async move { kv.delete_range(r).await })),
            "Txn" => Box::pin(unary(request, max, move |r| async move { kv.txn(r).await })),
            "Compact" => Box::pin(unary(request, max, move |r| async move { kv.compact(r).await })),
            _ => Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// Reads `request`'s one message, calls `handler` with it and answers with what it returns.
async fn unary<Req, Resp, F, Fut>(
    request: Request,
    max_message_bytes: usize,
    handler: F,
) -> Result<Response, std::convert::Infallible>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let (parts, body) = request.into_parts();
    let message = match read_message(&parts.headers, body, max_message_bytes).await {
        Ok(bytes) => match Req::decode(bytes) {
            Ok(message) => message,
            Err(e) => return Ok(Status::internal(format!("the request does not decode: {e}")).into_http()),
        },
        Err(status) => return Ok(status.into_http()),
    };
    let request =
        tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message);
    Ok(match handler(request).await {
        Ok(response) => answer(response),
        Err(status) => status.into_http(),
    })
}

/// The message of a unary request, without its prefix, read from `body` until it is whole: a
/// message that arrived in one DATA frame is a slice of that frame. The body's end is not waited
/// for. A unary call carries one message, and clients built on hyper (tonic's, so the Rust etcd
/// clients) send the end of the request as an empty DATA frame of its own after the message,
/// often in a packet of its own: waiting for it cost every call one more wake-up of its task and
/// the time of that packet. Bytes after the message in the frames already read are refused
/// (`SeveralMessages`); what comes in later frames is dropped unread with the body (once the
/// answer is complete, HTTP/2 lets the server reset a request stream that is still open with
/// NO_ERROR, and h2 does).
async fn read_message<B>(headers: &HeaderMap, mut body: B, max_message_bytes: usize) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if let Some(encoding) = headers.get("grpc-encoding").filter(|e| *e != "identity") {
        return Err(Status::unimplemented(format!(
            "the request is compressed ({encoding:?}); this server takes uncompressed messages only"
        )));
    }
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::internal(format!("reading the request failed: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        match &mut joined {
            None if whole.is_empty() => whole = data,
            None => {
                let mut buf = BytesMut::with_capacity(whole.len() + data.len());
                buf.extend_from_slice(&whole);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            Some(buf) => buf.extend_from_slice(&data),
        }
        let so_far = joined.as_deref().unwrap_or(&whole);
        if check_prefix(so_far, max_message_bytes)?
            .is_some_and(|length| so_far.len() >= PREFIX_BYTES + length)
        {
            break;
        }
    }
    Ok(message_of(joined.map_or(whole, BytesMut::freeze), max_message_bytes)?)
}

/// What is wrong with a unary body (a request's here, an answer's in the load generator). A
/// request's client is told it as tonic told it: all Internal but the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The body ended before any byte.
    NoMessage,
    /// The body ended inside the 5-byte prefix.
    CutPrefix,
    /// The prefix says compressed, but no `grpc-encoding` says how.
    CompressedWithoutEncoding,
    /// The prefix's flag is neither 0 nor 1.
    UnknownFlag(u8),
    /// The prefix announces more than the limit: refused before the rest is read.
    TooLarge {
        /// The length announced.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The body ended before the announced length.
    CutMessage,
    /// Bytes follow the one message a unary call carries.
    SeveralMessages,
}

/// What is wrong, said of the body ("the request ...", "the answer ...").
impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::NoMessage => write!(f, "has no message"),
            Malformed::CutPrefix => write!(f, "ends inside a message's prefix"),
            Malformed::CompressedWithoutEncoding => {
                write!(f, "marks its message compressed but names no encoding")
            }
            Malformed::UnknownFlag(flag) => {
                write!(f, "has a message whose compression flag is {flag}, not 0 or 1")
            }
            Malformed::TooLarge { length, max } => {
                write!(f, "announces a message of {length} bytes, over the limit of {max}")
            }
            Malformed::CutMessage => write!(f, "ends inside its message"),
            Malformed::SeveralMessages => write!(f, "holds more than one message"),
        }
    }
}

impl From<Malformed> for Status {
    fn from(m: Malformed) -> Status {
        match m {
            Malformed::TooLarge { length, max } => Status::out_of_range(format!(
                "decoded message length too large: {length} bytes, over the limit of {max}"
            )),
            m => Status::internal(format!("the request {m}")),
        }
    }
}

/// Checks a message's prefix once it has arrived: an uncompressed message within the limit,
/// whose announced length it returns (`None` before the prefix is whole). A message over the
/// limit is refused before the rest of it is read.
fn check_prefix(bytes: &[u8], max_message_bytes: usize) -> Result<Option<usize>, Malformed> {
    let Some(prefix) = bytes.get(..PREFIX_BYTES) else { return Ok(None) };
    match prefix[0] {
        0 => {}
        1 => return Err(Malformed::CompressedWithoutEncoding),
        flag => return Err(Malformed::UnknownFlag(flag)),
    }
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if length > max_message_bytes {
        return Err(Malformed::TooLarge { length, max: max_message_bytes });
    }
    Ok(Some(length))
}

/// The message of a whole unary body (a request's, or an answer's whose trailers said success):
/// exactly one, whole, within `max_message_bytes`, uncompressed.
pub fn message_of(mut body: Bytes, max_message_bytes: usize) -> Result<Bytes, Malformed> {
    if body.is_empty() {
        return Err(Malformed::NoMessage);
    }
    let Some(length) = check_prefix(&body, max_message_bytes)? else { return Err(Malformed::CutPrefix) };
    let message = body.split_off(PREFIX_BYTES);
    match message.len().cmp(&length) {
        std::cmp::Ordering::Less => Err(Malformed::CutMessage),
        std::cmp::Ordering::Greater => Err(Malformed::SeveralMessages),
        std::cmp::Ordering::Equal => Ok(message),
    }
}

/// A handler's answer as gRPC sends it: its metadata and `application/grpc` as headers, the
/// message in one DATA frame, then `grpc-status: 0`.
fn answer<M: prost::Message>(response: tonic::Response<M>) -> Response {
    let (metadata, message, extensions) = response.into_parts();
    let Some(encoded) = framed(&message) else {
        let length = message.encoded_len();
        return Status::resource_exhausted(format!("the answer ({length} bytes) is over gRPC's 4 GiB"))
            .into_http();
    };
    let mut response =
        http::Response::new(tonic::body::boxed(OneMessage { message: Some(encoded), ended: false }));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    *response.extensions_mut() = extensions;
    response
}

/// `message` behind gRPC's prefix (uncompressed), in a buffer of exactly its size; `None` for a
/// message over the 4 GiB the prefix can announce.
pub fn framed<M: prost::Message>(message: &M) -> Option<Bytes> {
    let length = message.encoded_len();
    let prefix_length = u32::try_from(length).ok()?;
    let mut encoded = BytesMut::with_capacity(PREFIX_BYTES + length);
    encoded.put_u8(0);
    encoded.put_u32(prefix_length);
    message.encode(&mut encoded).expect("the buffer has room for the whole message");
    Some(encoded.freeze())
}

/// A unary answer's body: one message, then the trailers of success.
struct OneMessage {
    /// The encoded message with its prefix, until sent.
    message: Option<Bytes>,
    /// Whether the trailers were sent.
    ended: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.ended = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(message.len() as u32);
        b.extend_from_slice(message);
        b.freeze()
    }

    #[test]
    fn one_whole_message_is_taken_in_place() {
        let body = framed(0, b"hello");
        let message = message_of(body.clone(), 16).unwrap();
        assert_eq!(&message[..], b"hello");
        assert_eq!(message.as_ptr(), body[PREFIX_BYTES..].as_ptr(), "a slice of the frame, not a copy");
        assert_eq!(message_of(framed(0, b""), 16).unwrap().len(), 0, "an empty message is a message");
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_status() {
        let code = |body: Bytes| Status::from(message_of(body, 16).unwrap_err()).code();
        assert_eq!(code(Bytes::new()), Code::Internal, "no message");
        assert_eq!(code(Bytes::from_static(&[0, 0, 0])), Code::Internal, "a cut prefix");
        assert_eq!(code(framed(1, b"x")), Code::Internal, "compressed without an encoding");
        assert_eq!(code(framed(7, b"x")), Code::Internal, "an unknown flag");
        let mut short = BytesMut::from(&framed(0, b"hello")[..]);
        short.truncate(7);
        assert_eq!(code(short.freeze()), Code::Internal, "a cut message");
        let mut two = BytesMut::from(&framed(0, b"a")[..]);
        two.extend_from_slice(&framed(0, b"b"));
        assert_eq!(code(two.freeze()), Code::Internal, "two messages");
        let over = Status::from(message_of(framed(0, &[0; 17]), 16).unwrap_err());
        assert_eq!(over.code(), Code::OutOfRange);
        assert!(over.message().contains("decoded message length too large"), "{over:?}");
    }

    /// A body in pieces, cut inside the prefix and inside the message, is joined into the one
    /// message; a compressed request is refused before its body is read.
    #[tokio::test]
    async fn a_message_in_several_frames_is_joined() {
        let whole = framed(0, b"several frames");
        let pieces: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            [&whole[..3], &whole[3..9], &whole[9..]]
                .iter()
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
                .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(pieces));
        let message = read_message(&HeaderMap::new(), body, 64).await.unwrap();
        assert_eq!(&message[..], b"several frames");

        let mut gzip = HeaderMap::new();
        gzip.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let body = http_body_util::Full::new(whole);
        assert_eq!(read_message(&gzip, body, 64).await.unwrap_err().code(), Code::Unimplemented);
    }

    /// The call starts once its message is whole, before the body ends: a body that then stays
    /// open (the client's end-of-stream frame still on its way) does not hold it.
    #[tokio::test]
    async fn a_whole_message_is_taken_before_the_body_ends() {
        use tokio_stream::StreamExt;
        let whole = framed(0, b"no end yet");
        let (head, tail) = (whole.slice(..8), whole.slice(8..));
        let frames =
            tokio_stream::iter([head, tail].map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))))
                .chain(tokio_stream::pending());
        let body = http_body_util::StreamBody::new(frames);
        let headers = HeaderMap::new();
        let read = tokio::time::timeout(Duration::from_secs(5), read_message(&headers, body, 64));
        let message = read.await.expect("the message is read without waiting for the body's end").unwrap();
        assert_eq!(&message[..], b"no end yet");

        let mut trailing = BytesMut::from(&whole[..]);
        trailing.extend_from_slice(b"xyz");
        let body = http_body_util::Full::new(trailing.freeze());
        let refused = read_message(&HeaderMap::new(), body, 64).await.unwrap_err();
        assert_eq!(refused.message(), Status::from(Malformed::SeveralMessages).message(), "bytes after it");
    }

    #[test]
    fn an_oversized_message_is_refused_from_its_prefix() {
        let mut prefix = BytesMut::new();
        prefix.put_u8(0);
        prefix.put_u32(1 << 30);
        let refused = check_prefix(&prefix, 1 << 20).unwrap_err();
        assert_eq!(refused, Malformed::TooLarge { length: 1 << 30, max: 1 << 20 });
        assert_eq!(Status::from(refused).code(), Code::OutOfRange);
        assert_eq!(check_prefix(&prefix[..3], 1 << 20), Ok(None), "not judged before the prefix is whole");
    }
}
