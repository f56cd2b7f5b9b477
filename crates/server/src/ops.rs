//! Operations endpoints over HTTP/1.1: `/metrics` (Prometheus text) and `/health` (etcd's
//! `{"health":"true"}`), served on the client port beside gRPC and on `--listen-metrics-urls`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::node::NodeHandle;

/// How long `/health` waits for the driver thread; a driver stuck longer (in a hung fsync, say)
/// is reported unhealthy rather than leaving the prober hanging.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// The routes, for one member.
pub fn router(node: Arc<NodeHandle>) -> axum::Router {
    axum::Router::new().route("/metrics", get(metrics)).route("/health", get(health)).with_state(node)
}

/// Serves the routes alone on `listener` (for `--listen-metrics-urls`).
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

async fn metrics(State(node): State<Arc<NodeHandle>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics().encode())
}

/// Healthy means: the node runs and knows a leader (etcd's main criterion). Unhealthy answers
/// 503, so a load balancer's plain status check works as well as reading the body.
async fn health(State(node): State<Arc<NodeHandle>>) -> impl IntoResponse {
    let healthy = matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, node.status()).await,
        Ok(Ok(s)) if s.leader_id.is_some()
    );
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{{\"health\":\"{healthy}\"}}"))
}
