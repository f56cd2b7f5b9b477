//! Leases: grant, revoke, time-to-live, and a [`KeepAlive`] task that renews one until dropped.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::lease_client::LeaseClient;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease id.
    pub id: i64,
    /// The TTL the server granted, in seconds (it may raise a small one).
    pub ttl: i64,
}

/// What [`Client::lease_time_to_live`] learns about a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The lease id.
    pub id: i64,
    /// Seconds left.
    pub ttl: i64,
    /// The TTL it was granted with.
    pub granted_ttl: i64,
    /// Its keys, if asked for.
    pub keys: Vec<Vec<u8>>,
}

/// The state a [`KeepAlive`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; the server's TTL at the last renewal, in seconds.
    Alive {
        /// Seconds granted by the last renewal.
        ttl: i64,
    },
    /// The lease is gone (the server says so, or it could not be renewed before it ran out).
    Lost(Error),
}

/// Renews a lease every TTL/3 in a background task until dropped. Watch
/// [`KeepAlive::lost`] to learn if the lease is lost anyway.
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The latest state.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Waits until the lease is lost; returns why.
    pub async fn lost(&mut self) -> Error {
        loop {
            if let LeaseState::Lost(e) = &*self.state.borrow_and_update() {
                return e.clone();
            }
            if self.state.changed().await.is_err() {
                return Error::LeaseLost(self.id);
            }
        }
    }
}

impl Drop for KeepAlive {
    /// Stops renewing; the lease then expires after its TTL (revoke it to end it at once).
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose the id.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrant> {
        let request = pb::LeaseGrantRequest { ttl, id };
        let r = self
            .write(request, |svc, request| async move { LeaseClient::new(svc).lease_grant(request).await })
            .await?
            .into_inner();
        if !r.error.is_empty() {
            return Err(Error::Server { code: tonic::Code::Unknown, message: r.error });
        }
        Ok(LeaseGrant { id: r.id, ttl: r.ttl })
    }

    /// Revokes a lease: its keys are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        self.write(pb::LeaseRevokeRequest { id }, |svc, request| async move {
            LeaseClient::new(svc).lease_revoke(request).await
        })
        .await?;
        Ok(())
    }

    /// A lease's remaining time (and keys, if `keys`); `None` if there is no such lease.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<Option<LeaseTtl>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                LeaseClient::new(svc).lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys }).await
            })
            .await?
            .into_inner();
        if r.ttl < 0 {
            return Ok(None);
        }
        Ok(Some(LeaseTtl { id: r.id, ttl: r.ttl, granted_ttl: r.granted_ttl, keys: r.keys }))
    }

    /// The ids of every live lease.
    pub async fn lease_list(&self) -> Result<Vec<i64>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                LeaseClient::new(svc).lease_leases(pb::LeaseLeasesRequest {}).await
            })
            .await?;
        Ok(r.into_inner().leases.into_iter().map(|l| l.id).collect())
    }

    /// Renews a lease once; returns its new TTL, or [`Error::LeaseNotFound`] if it is gone.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        self.keep_alive_until(id, Instant::now() + self.options().retry_budget).await
    }

    async fn keep_alive_until(&self, id: i64, deadline: Instant) -> Result<i64> {
        let ttl = self
            .run_until(Route::Leader, deadline, |svc| async move {
                // One short-lived stream per renewal: simple to retry on another member, and a
                // renewal every TTL/3 makes the extra stream set-up negligible.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
                let mut responses =
                    LeaseClient::new(svc).lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
                match responses.message().await? {
                    Some(r) => Ok(r.ttl),
                    None => Err(tonic::Status::unavailable("keep-alive stream ended without an answer")),
                }
            })
            .await?;
        if ttl <= 0 {
            return Err(Error::LeaseNotFound);
        }
        Ok(ttl)
    }

    /// Starts renewing lease `id` every TTL/3 until the returned handle is dropped. Renews once
    /// first, so a lease that is already gone is an error here.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<KeepAlive> {
        let ttl = self.lease_keep_alive_once(id).await?;
        let (tx, state) = watch::channel(LeaseState::Alive { ttl });
        let task = tokio::spawn(renew(self.clone(), id, ttl, tx));
        Ok(KeepAlive { id, state, task })
    }
}

/// The keep-alive task: renew every TTL/3; retry failures until the lease would have run out.
async fn renew(client: Client, id: i64, mut ttl: i64, state: watch::Sender<LeaseState>) {
    let mut expires = Instant::now() + Duration::from_secs(ttl as u64);
    loop {
        let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
        tokio::time::sleep(period).await;
        match client.keep_alive_until(id, expires).await {
            Ok(t) => {
                ttl = t;
                expires = Instant::now() + Duration::from_secs(t as u64);
                let _ = state.send(LeaseState::Alive { ttl });
            }
            Err(e) if e.is_retryable() && Instant::now() < expires => continue,
            Err(Error::LeaseNotFound) => {
                let _ = state.send(LeaseState::Lost(Error::LeaseLost(id)));
                return;
            }
            Err(e) => {
                let _ = state.send(LeaseState::Lost(e));
                return;
            }
        }
    }
}
