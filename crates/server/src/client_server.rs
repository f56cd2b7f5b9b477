//! The client port's HTTP server: gRPC over HTTP/2 (and HTTP/1.1 for `/metrics` and `/health`)
//! on accepted connections, with the KV and Log services reached without a router.
//!
//! Why not `tonic::transport::Server`: every request it serves passes through a stack of
//! general-purpose layers (a boxed, cloned service per request, an axum path router, oneshot
//! wrappers, a boxed request body), which took about 6% of a member's CPU at 256-client puts
//! (`perf`, innermost frames in those layers, socket I/O excluded). Here the methods that carry
//! the load go straight to their service: `etcdserverpb.KV`'s, all unary, to the handlers
//! without tonic's codec ([`crate::unary`]), `balsapb.Log`'s to its generated service, one boxed
//! future per request; every other path (Watch, Lease, Cluster, Maintenance, Session, the HTTP
//! routes) goes to the router as before.
//!
//! Connections are tasks of a [`JoinSet`] owned by the accept loop, so dropping the server
//! (a member stopping) closes them too. HTTP/2 settings are hyper's defaults, which are also
//! what tonic's server used, but for the `date` header, which answers here go without. A
//! `grpc-timeout` header is not enforced here: a client that gives up resets its stream, which
//! drops the handler's future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::body::BoxBody;
use tower::{Service, ServiceExt};

use crate::flat_writes::FlatWrites;
use crate::kv_service::KvService;
use crate::log_service::LogService;
use crate::pb::balsapb::log_server::LogServer;
use crate::unary::KvCalls;

/// A request and what answers it.
pub type Request = http::Request<Incoming>;
/// The answer: a gRPC (or plain HTTP) response.
pub type Response = http::Response<BoxBody>;
/// What a route's call returns: the answer, when it is ready.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Routes a request by its path: the hot services directly, the rest through `router`.
#[derive(Clone)]
pub struct Dispatch {
    /// `/etcdserverpb.KV/*`: puts, ranges, transactions, compaction, without tonic's codec.
    pub kv: KvCalls<KvService>,
    /// `/balsapb.Log/*`: log-stream appends and reads.
    pub log: Only<LogServer<LogService>>,
    /// Every other path: the remaining gRPC services and the plain HTTP routes.
    pub router: axum::Router,
}

impl hyper::service::Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request) -> Answer {
        let path = request.uri().path();
        if path.starts_with("/etcdserverpb.KV/") {
            self.kv.call(request)
        } else if path.starts_with("/balsapb.Log/") {
            self.log.call(request)
        } else {
            let router = self.router.clone();
            Box::pin(async move {
                let response = router.oneshot(request).await?;
                Ok(response.map(|body| body.map_err(|e| tonic::Status::from_error(e.into())).boxed_unsync()))
            })
        }
    }
}

/// One generated gRPC service, called without a router (a [`Dispatch`] route).
#[derive(Clone)]
pub struct Only<S>(pub S);

impl<S> hyper::service::Service<Request> for Only<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request) -> Answer {
        Box::pin(self.0.clone().oneshot(request))
    }
}

/// How long the accept loop pauses after a failed accept (out of file descriptors, say)
/// before trying again, instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `service` on every connection `listener` accepts, until dropped. Accepted
/// connections have Nagle's algorithm off: a small response would otherwise wait for the
/// client's delayed ACK (40 ms on Linux).
pub async fn serve<S>(listener: TcpListener, service: S)
where
    S: hyper::service::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    // No `date` header on HTTP/2 answers: gRPC has no use for it (grpc-go sends none), and hyper
    // would read the clock, allocate the value and HPACK-encode it for every call.
    builder.http2().timer(TokioTimer::new()).auto_date_header(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (builder, service) = (builder.clone(), service.clone());
                    connections.spawn(async move {
                        let served = builder.serve_connection(TokioIo::new(FlatWrites(stream)), service).await;
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "client connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a client connection failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
