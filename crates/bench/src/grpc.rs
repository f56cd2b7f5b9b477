//! Unary gRPC calls written as etcd's own clients write them: the request's headers and its one
//! message leave in one write, and the message's DATA frame ends the stream.
//!
//! tonic's client sends a unary call as a stream of one message: the HEADERS frame, the message
//! in a DATA frame, then an empty DATA frame that ends the stream, and with one call in flight
//! each of the three is a write (and a loopback packet) of its own. grpc-go, the client of
//! etcdctl and of etcd's `clientv3`, writes HEADERS and one DATA frame carrying END_STREAM
//! together (both seen with `strace` against etcd 3.4). A load generator that sends three
//! packets per call measures the servers' cost of packets a real client does not send, and on a
//! machine it shares with them spends CPU they could use; it also leaves some servers waiting
//! for the last frame before they answer. [`UnaryChannel`] is an HTTP/2 connection of the h2 crate
//! used directly: the request's headers and its DATA frame, END_STREAM set, are queued by the
//! caller at once, and the connection's task writes them in one go.
//!
//! Answers are read as gRPC defines them: HTTP 200 and `application/grpc`, one length-prefixed
//! message, then `grpc-status` (and `grpc-message`) in the trailers, or a trailers-only answer
//! for an error. Anything else is a [`Status`] naming what was wrong.

// The error of every call is tonic's `Status`, as callers of tonic's stubs had it; its size
// (176 bytes) matters nothing next to a call's network round trip.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use balsa_server::flat_writes::FlatWrites;
use balsa_server::unary;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tonic::{Code, Status};

use crate::BenchError;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/2 windows the connection offers, as tonic's channels (hyper's defaults) offered them:
/// a stream may receive 2 MiB before its reader releases any, the connection 5 MiB.
const STREAM_WINDOW_BYTES: u32 = 2 << 20;
/// See [`STREAM_WINDOW_BYTES`].
const CONNECTION_WINDOW_BYTES: u32 = 5 << 20;

/// One HTTP/2 connection to a gRPC server, shared by the clients that clone it (each clone sends
/// on the same connection; calls run concurrently as HTTP/2 streams).
#[derive(Clone)]
pub struct UnaryChannel {
    /// h2's handle on the connection (the connection itself runs in a task of its own).
    send: h2::client::SendRequest<Bytes>,
    /// `host:port` of the endpoint, the `:authority` of every call.
    authority: Authority,
}

impl UnaryChannel {
    /// Connects to `endpoint` (`host:port` or `http://host:port`; TLS is not spoken) with
    /// Nagle's algorithm off, as tonic's channels were opened.
    pub async fn connect(endpoint: &str) -> Result<Self, BenchError> {
        let authority = authority_of(endpoint)?;
        let connecting = tokio::net::TcpStream::connect(authority.as_str());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                BenchError::Connect(format!("{endpoint}: no connection within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|e| BenchError::Connect(format!("{endpoint}: {e}")))?;
        stream.set_nodelay(true).map_err(|e| BenchError::Connect(format!("{endpoint}: {e}")))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(FlatWrites(stream))
            .await
            .map_err(|e| BenchError::Connect(format!("{endpoint}: HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the server closes; calls then fail.
            let _ = connection.await;
        });
        Ok(Self { send, authority })
    }

    /// Calls `path` (`/package.Service/Method`) with `message` and decodes the answer. The
    /// headers and the message are queued together, before the connection's task can write
    /// either, so they leave in one write.
    pub async fn call<Req, Resp>(&mut self, path: &'static str, message: &Req) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let request = self.request(path)?;
        let body = framed(message)?;
        let gone = |e: h2::Error| Status::unavailable(format!("the call failed: {e}"));
        let mut send = self.send.clone().ready().await.map_err(gone)?;
        let (answer, mut stream) = send.send_request(request, false).map_err(gone)?;
        // The connection's task may run on another thread: a server that answers from the headers
        // alone (an unknown method: trailers only) can end the stream before the body is queued,
        // and then the body's send fails where the call did not. Its answer decides.
        let sent = stream.send_data(body, true);
        let (parts, mut body) = match answer.await {
            Ok(answer) => answer.into_parts(),
            Err(e) => return Err(gone(sent.err().unwrap_or(e))),
        };
        answer_status(parts.status, &parts.headers)?;
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(gone)?;
            // Hand the window back, or the connection stops receiving after 5 MiB of answers.
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(gone)?.unwrap_or_default();
        decode_answer(data.freeze(), &trailers)
    }

    /// The HTTP/2 request of a call, without its body: POST, gRPC's content type, `te: trailers`.
    fn request(&self, path: &'static str) -> Result<http::Request<()>, Status> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(format!("{path}: {e}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        Ok(request)
    }
}

/// `host:port` of an endpoint given with or without `http://`.
fn authority_of(endpoint: &str) -> Result<Authority, BenchError> {
    let bare = match endpoint.split_once("://") {
        None => endpoint,
        Some(("http", rest)) => rest.trim_end_matches('/'),
        Some((scheme, _)) => {
            return Err(BenchError::Usage(format!(
                "--endpoints {endpoint}: {scheme}:// is not spoken, only http://"
            )))
        }
    };
    bare.parse::<Authority>()
        .ok()
        .filter(|a| a.port_u16().is_some())
        .ok_or_else(|| BenchError::Usage(format!("--endpoints {endpoint}: not host:port")))
}

/// `message` behind gRPC's prefix, as balsa's server frames its answers.
fn framed<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    unary::framed(message)
        .ok_or_else(|| Status::out_of_range(format!("a message of {} bytes", message.encoded_len())))
}

/// Checks an answer's HTTP status and headers: a status other than 200 is mapped as gRPC maps
/// it, and a `grpc-status` already in the headers (a trailers-only answer) is the call's error.
fn answer_status(status: StatusCode, headers: &HeaderMap) -> Result<(), Status> {
    if status != StatusCode::OK {
        let code = match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        };
        return Err(Status::new(code, format!("the server answered HTTP {status}")));
    }
    match Status::from_header_map(headers) {
        Some(s) if s.code() != Code::Ok => Err(s),
        Some(_) => Err(Status::internal("a trailers-only answer of success carries no message")),
        None => Ok(()),
    }
}

/// The message of an answer whose trailers say success: exactly one, uncompressed.
fn decode_answer<Resp: prost::Message + Default>(data: Bytes, trailers: &HeaderMap) -> Result<Resp, Status> {
    match Status::from_header_map(trailers) {
        Some(s) if s.code() != Code::Ok => return Err(s),
        Some(_) => {}
        None => return Err(Status::internal("the answer ended without a grpc-status")),
    }
    // The message's size is the server's to bound; the answer is in memory already.
    let message =
        unary::message_of(data, usize::MAX).map_err(|m| Status::internal(format!("the answer {m}")))?;
    Resp::decode(message).map_err(|e| Status::internal(format!("the answer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use balsa_server::pb::etcdserverpb::{PutResponse, ResponseHeader};
    use balsa_server::unary::PREFIX_BYTES;

    fn ok_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    fn put_answer(revision: i64) -> PutResponse {
        PutResponse { header: Some(ResponseHeader { revision, ..Default::default() }), prev_kv: None }
    }

    /// The frames of stream 1 a raw listener receives from one call, as (type, flags, length),
    /// up to its first DATA frame and for 200 ms after.
    async fn frames_of_one_call() -> Vec<(u8, u8, usize)> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let call = tokio::spawn(async move {
            let mut channel = UnaryChannel::connect(&endpoint).await.unwrap();
            let put = balsa_server::pb::etcdserverpb::PutRequest { key: b"k".to_vec(), ..Default::default() };
            let _: Result<PutResponse, Status> = channel.call("/etcdserverpb.KV/Put", &put).await;
        });
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        let mut quiet_from: Option<tokio::time::Instant> = None;
        loop {
            let mut buf = [0u8; 4096];
            let deadline = quiet_from
                .map_or(Duration::from_secs(5), |t| Duration::from_millis(200).saturating_sub(t.elapsed()));
            match tokio::time::timeout(deadline, socket.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
                _ => break,
            }
            // The client's preface, then frames: a 3-byte length, type, flags, stream id.
            let mut at = 24;
            frames.clear();
            while bytes.len() >= at + 9 {
                let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
                let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
                if stream == 1 {
                    frames.push((bytes[at + 3], bytes[at + 4], length));
                }
                at += 9 + length;
            }
            if quiet_from.is_none() && frames.iter().any(|f| f.0 == 0) {
                quiet_from = Some(tokio::time::Instant::now());
            }
        }
        call.abort();
        frames
    }

    /// What the module is for: the call's message travels in one DATA frame that ends the stream,
    /// not followed by an empty one (as tonic's client sends it).
    #[tokio::test]
    async fn a_call_is_headers_and_one_data_frame_that_ends_the_stream() {
        const DATA: u8 = 0;
        const HEADERS: u8 = 1;
        const END_STREAM: u8 = 1;
        let frames = frames_of_one_call().await;
        let put = balsa_server::pb::etcdserverpb::PutRequest { key: b"k".to_vec(), ..Default::default() };
        let message_bytes = PREFIX_BYTES + prost::Message::encoded_len(&put);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].0, HEADERS);
        assert_eq!(frames[0].1 & END_STREAM, 0, "the headers do not end the stream: {frames:?}");
        assert_eq!(frames[1], (DATA, END_STREAM, message_bytes), "one DATA frame, END_STREAM set");
    }

    #[test]
    fn endpoints_are_host_and_port_over_plain_http() {
        assert_eq!(authority_of("127.0.0.1:2379").unwrap().as_str(), "127.0.0.1:2379");
        assert_eq!(authority_of("http://localhost:2379/").unwrap().as_str(), "localhost:2379");
        assert!(matches!(authority_of("https://a:1"), Err(BenchError::Usage(m)) if m.contains("https")));
        assert!(authority_of("127.0.0.1").is_err(), "no port");
        assert!(authority_of("not a host:1").is_err());
    }

    #[test]
    fn a_message_is_framed_behind_its_prefix() {
        let framed = framed(&put_answer(7)).unwrap();
        let decoded: PutResponse = decode_answer(framed.clone(), &ok_trailers()).unwrap();
        assert_eq!(decoded, put_answer(7), "what is framed decodes back");
        assert_eq!(framed[0], 0, "uncompressed");
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            framed.len() - PREFIX_BYTES
        );
    }

    #[test]
    fn an_error_in_the_trailers_or_the_headers_is_the_calls_error() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("9"));
        trailers.insert("grpc-message", HeaderValue::from_static("lease%20not%20found"));
        let failed = decode_answer::<PutResponse>(Bytes::new(), &trailers).unwrap_err();
        assert_eq!((failed.code(), failed.message()), (Code::FailedPrecondition, "lease not found"));
        let only = answer_status(StatusCode::OK, &trailers).unwrap_err();
        assert_eq!(only.code(), Code::FailedPrecondition, "a trailers-only answer");
        assert!(answer_status(StatusCode::OK, &HeaderMap::new()).is_ok(), "headers of an answer to come");
        assert_eq!(answer_status(StatusCode::OK, &ok_trailers()).unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn answers_that_are_not_grpc_are_refused_with_a_status() {
        assert_eq!(
            answer_status(StatusCode::NOT_FOUND, &HeaderMap::new()).unwrap_err().code(),
            Code::Unimplemented
        );
        assert_eq!(
            answer_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()).unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(
            answer_status(StatusCode::IM_A_TEAPOT, &HeaderMap::new()).unwrap_err().code(),
            Code::Unknown
        );
        let whole = framed(&put_answer(1)).unwrap();
        let code = |data: Bytes, trailers: &HeaderMap| {
            decode_answer::<PutResponse>(data, trailers).unwrap_err().code()
        };
        assert_eq!(code(whole.clone(), &HeaderMap::new()), Code::Internal, "no grpc-status");
        assert_eq!(code(whole.slice(..3), &ok_trailers()), Code::Internal, "a cut prefix");
        assert_eq!(code(whole.slice(..whole.len() - 1), &ok_trailers()), Code::Internal, "a cut message");
        let mut compressed = BytesMut::from(&whole[..]);
        compressed[0] = 1;
        assert_eq!(code(compressed.freeze(), &ok_trailers()), Code::Internal, "compressed");
        let mut two = BytesMut::from(&whole[..]);
        two.extend_from_slice(&whole);
        assert_eq!(code(two.freeze(), &ok_trailers()), Code::Internal, "two messages");
    }
}
