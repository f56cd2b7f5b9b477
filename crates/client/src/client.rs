//! The connection to a cluster: endpoints, leader discovery, and the one retry loop every call
//! goes through.
//!
//! Policy, in one place (`Client::run`): a call is sent to the leader when it changes state (or
//! reads linearizably), to any member otherwise. If the answer is "not leader", "unavailable",
//! a transport failure or a time-out, the client forgets the leader it believed in, waits an
//! exponentially growing, jittered pause, finds the leader again (Maintenance.Status on every
//! endpoint) and tries again, until the call's total deadline. Other answers are returned at once.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::balsapb::session_client::SessionClient;
use crate::balsapb::{CloseSessionRequest, RegisterSessionRequest};
use crate::error::{Error, Result};
use crate::pb;
use crate::session::{Seq, Session, SessionInterceptor, SessionPool};

/// The gRPC service every stub is built on: a channel to one endpoint, through the session
/// interceptor.
pub(crate) type Svc = InterceptedService<Channel, SessionInterceptor>;

/// How a [`Client`] talks to the cluster. `Default` suits a cluster on a LAN.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The limit for one attempt of one call (and for opening a connection): a member that has
    /// not answered by then is treated as unavailable. Default 5 s.
    pub request_timeout: Duration,
    /// The limit for a whole call, retries included (the retry budget). Default 15 s: enough to
    /// outlast an election after a leader is lost.
    pub retry_budget: Duration,
    /// The first pause between attempts; it doubles up to `max_backoff`, and each pause is
    /// drawn between half of it and all of it (jitter), so clients that failed together do not
    /// retry together. Default 50 ms.
    pub initial_backoff: Duration,
    /// The longest pause between attempts. Default 1 s.
    pub max_backoff: Duration,
    /// Exactly-once writes (default `true`): the client registers sessions with the cluster
    /// (`balsapb.Session/Register`) and sends every write in one, so a write retried after its
    /// answer was lost is applied once. Against a server without sessions (etcd) the client
    /// notices (Unimplemented) and writes without them. `false`: etcd's at-least-once retries.
    pub sessions: bool,
    /// The timeout asked for each registered session (default 60 s): the cluster drops a session
    /// unused for this long.
    pub session_timeout: Duration,
    /// The most writes in flight at once in sessions, so the most sessions the client holds
    /// (default 16). A write waits for a free session beyond that. See [`Session`] for why one
    /// session carries one write at a time.
    pub max_sessions: usize,
    /// A session of the caller's own (an id registered elsewhere, e.g. persisted across a
    /// restart with [`Session::resume`]): if set, every write uses it, one at a time, and
    /// `sessions` is ignored.
    pub session: Option<Session>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(15),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            sessions: true,
            session_timeout: Duration::from_secs(60),
            max_sessions: 16,
            session: None,
        }
    }
}

/// Where a call should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader if known (writes, linearizable reads): the member that would do the work anyway.
    Leader,
    /// Any member (serializable reads, watches, snapshots).
    Any,
}

/// A handle to a balsa (or etcd v3) cluster. Cheap to clone: clones share connections and the
/// leader they have found.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The endpoints as given (normalised to `http://host:port`), in order.
    pub(crate) urls: Vec<String>,
    /// One lazily connected channel per endpoint, so a member that is down costs nothing until
    /// it is tried.
    channels: Vec<Channel>,
    /// The endpoint of the leader, as last discovered; `None` after a failure.
    leader: Mutex<Option<usize>>,
    /// The endpoint `Route::Any` calls use; moves on after a failure.
    sticky: AtomicUsize,
    pub(crate) options: ClientOptions,
    /// Sessions for exactly-once writes.
    pub(crate) sessions: SessionPool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.inner.urls).finish()
    }
}

/// `host:port` or `http://host:port` as a URL tonic can dial.
fn normalise(endpoint: &str) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let url = if e.starts_with("http://") {
        e.to_string()
    } else if e.contains("://") {
        // TLS is not supported yet; say so rather than fail obscurely.
        return Err(Error::InvalidEndpoint(format!("{endpoint} (only http:// is supported)")));
    } else {
        format!("http://{e}")
    };
    if url.len() <= "http://".len() {
        return Err(Error::InvalidEndpoint(endpoint.to_string()));
    }
    Ok(url)
}

impl Client {
    /// Connects to a cluster through `endpoints` (`host:port` or `http://host:port`), finds
    /// its leader and (with `options.sessions`, the default) registers a first session. Fails if
    /// no endpoint answers within `options.retry_budget`.
    pub async fn connect(endpoints: &[&str], options: ClientOptions) -> Result<Client> {
        let client = Self::connect_lazy(endpoints, options)?;
        let deadline = Instant::now() + client.inner.options.retry_budget;
        let mut backoff = client.backoff();
        loop {
            match client.discover().await {
                Ok(_) => break,
                Err(e) if Instant::now() + backoff.peek() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(backoff.next_pause()).await,
            }
        }
        if client.inner.options.session.is_none() && client.inner.sessions.active() {
            if let Some(session) = client.register_session().await? {
                client.inner.sessions.put_back(session);
            }
        }
        Ok(client)
    }

    /// Registers a new session; `None` if the cluster has no sessions (etcd), which is then
    /// remembered and writes go without.
    async fn register_session(&self) -> Result<Option<Session>> {
        let timeout_ms = self.inner.sessions.timeout.as_millis().max(1) as u64;
        let answer = self
            .run(Route::Leader, |svc| async move {
                SessionClient::new(svc).register(RegisterSessionRequest { timeout_ms }).await
            })
            .await;
        match answer {
            Ok(r) => {
                self.inner.sessions.registered.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Session::new(r.into_inner().client_id)))
            }
            Err(Error::Server { code: tonic::Code::Unimplemented, .. }) => {
                self.inner.sessions.mark_unsupported();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// How many sessions this client has registered (a client doing one write at a time needs
    /// one; a new one is registered when writes overlap or a session expired).
    pub fn sessions_registered(&self) -> u64 {
        self.inner.sessions.registered.load(Ordering::Relaxed)
    }

    /// Whether writes go in sessions (sessions enabled and served by the cluster, as far as the
    /// client knows yet).
    pub fn sessions_active(&self) -> bool {
        self.inner.sessions.active()
    }

    /// Closes the sessions not in use (they would otherwise expire after their timeout). Call it
    /// when done with a client; writes after it register new sessions.
    pub async fn close_sessions(&self) -> Result<()> {
        for session in self.inner.sessions.drain_idle() {
            let client_id = session.client_id();
            self.run(Route::Leader, |svc| async move {
                SessionClient::new(svc).close(CloseSessionRequest { client_id }).await
            })
            .await?;
        }
        Ok(())
    }

    /// A client that has not contacted anyone yet: the first call finds the leader.
    pub fn connect_lazy(endpoints: &[&str], options: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoints given".into()));
        }
        let urls = endpoints.iter().map(|e| normalise(e)).collect::<Result<Vec<_>>>()?;
        let mut channels = Vec::with_capacity(urls.len());
        for url in &urls {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|_| Error::InvalidEndpoint(url.clone()))?
                .connect_timeout(options.request_timeout)
                // Pings find a member that vanished without closing the connection, which
                // matters most to watches and keep-alives that otherwise wait forever.
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            channels.push(endpoint.connect_lazy());
        }
        let sessions = SessionPool::new(
            options.session.clone(),
            options.sessions,
            options.session_timeout,
            options.max_sessions,
        );
        let inner = Inner {
            urls,
            channels,
            leader: Mutex::new(None),
            sticky: AtomicUsize::new(0),
            options,
            sessions,
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The endpoints, normalised, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.urls
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The caller's own session (`ClientOptions::session`), if set.
    pub fn session(&self) -> Option<&Session> {
        self.inner.options.session.as_ref()
    }

    /// The endpoint of the leader, as last discovered (`None` if unknown right now).
    pub fn leader_endpoint(&self) -> Option<&str> {
        let leader = *self.inner.leader.lock().expect("leader lock");
        leader.map(|i| self.inner.urls[i].as_str())
    }

    /// The index of the leader's endpoint, as last discovered.
    pub(crate) fn leader_index(&self) -> Option<usize> {
        *self.inner.leader.lock().expect("leader lock")
    }

    pub(crate) fn svc(&self, endpoint: usize) -> Svc {
        InterceptedService::new(self.inner.channels[endpoint].clone(), SessionInterceptor)
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.inner.options.initial_backoff, self.inner.options.max_backoff)
    }

    /// Asks every endpoint for its status at once; remembers and returns the leader's endpoint
    /// if one of them is the leader. Errors only if no endpoint answered.
    pub async fn discover(&self) -> Result<Option<usize>> {
        let limit = self.inner.options.request_timeout;
        let asks = (0..self.inner.urls.len()).map(|i| {
            let mut m = pb::maintenance_client::MaintenanceClient::new(self.svc(i));
            async move {
                match tokio::time::timeout(limit, m.status(pb::StatusRequest {})).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(Error::from(s)),
                    Err(_) => Err(Error::Timeout(format!("status: no answer within {limit:?}"))),
                }
            }
        });
        let answers = futures_join_all(asks).await;
        let mut last_error = None;
        let mut believed: Option<(u64, u64)> = None; // (term, leader id) of the newest view
        let mut ids = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(s) => {
                    let member = s.header.as_ref().map_or(0, |h| h.member_id);
                    ids.push((i, member));
                    if s.leader != 0 && believed.is_none_or(|(term, _)| s.raft_term > term) {
                        believed = Some((s.raft_term, s.leader));
                    }
                }
                Err(e) => last_error = Some(format!("{}: {e}", self.inner.urls[i])),
            }
        }
        if ids.is_empty() {
            let why = last_error.unwrap_or_else(|| "no endpoints".into());
            return Err(Error::Unavailable(format!("no endpoint answered ({why})")));
        }
        let leader = believed.and_then(|(_, id)| ids.iter().find(|(_, m)| *m == id).map(|(i, _)| *i));
        *self.inner.leader.lock().expect("leader lock") = leader;
        if leader.is_none() {
            // Some member answered: send `Any` traffic there (it forwards writes, too).
            self.inner.sticky.store(ids[0].0, Ordering::Relaxed);
        }
        Ok(leader)
    }

    /// The endpoint for the next attempt of a call routed by `route`.
    async fn pick(&self, route: Route) -> usize {
        if route == Route::Leader {
            if let Some(l) = *self.inner.leader.lock().expect("leader lock") {
                return l;
            }
            if let Ok(Some(l)) = self.discover().await {
                return l;
            }
        }
        self.inner.sticky.load(Ordering::Relaxed) % self.inner.urls.len()
    }

    /// After a failure at `endpoint`: forget it as leader, and move `Any` traffic along.
    fn failed(&self, endpoint: usize) {
        let mut leader = self.inner.leader.lock().expect("leader lock");
        if *leader == Some(endpoint) {
            *leader = None;
        }
        let _ = self.inner.sticky.compare_exchange(
            endpoint,
            (endpoint + 1) % self.inner.urls.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs one call with the retry policy, within the retry budget.
    pub(crate) async fn run<T, F, Fut>(&self, route: Route, attempt: F) -> Result<T>
    where
        F: FnMut(Svc) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.run_until(route, Instant::now() + self.inner.options.retry_budget, attempt).await
    }

    /// [`Client::run`] with an explicit deadline for the whole call.
    pub(crate) async fn run_until<T, F, Fut>(
        &self,
        route: Route,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Svc) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut backoff = self.backoff();
        loop {
            let endpoint = self.pick(route).await;
            let limit =
                self.inner.options.request_timeout.min(deadline.saturating_duration_since(Instant::now()));
            let error = match tokio::time::timeout(limit, attempt(self.svc(endpoint))).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => Error::from(status),
                Err(_) => {
                    Error::Timeout(format!("no answer from {} within {limit:?}", self.inner.urls[endpoint]))
                }
            };
            if !error.is_retryable() {
                return Err(error);
            }
            self.failed(endpoint);
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs one write with the retry policy, in a session when sessions are active: it takes a
    /// session from the pool (registering one if none is idle), numbers the write once, sends
    /// every attempt with that number, and gives the session back when it has an answer.
    ///
    /// A session found expired on the write's *first* attempt is harmless (the server applied
    /// nothing: it refused the only copy of the write): the client registers a new session and
    /// sends the write again. Found expired on a later attempt, the write may have been applied
    /// by an earlier attempt whose answer was lost, and the session that remembered that answer
    /// is gone, so sending it again could apply it twice: [`Error::SessionExpired`] is returned
    /// and the caller decides (read the state, then act).
    pub(crate) async fn write<M, T, F, Fut>(&self, message: M, mut attempt: F) -> Result<T>
    where
        M: Clone,
        F: FnMut(Svc, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.options.retry_budget;
        let mut renewed = false;
        loop {
            let pool = &self.inner.sessions;
            let mut held = None;
            if pool.active() {
                let permit = tokio::time::timeout_at(deadline, pool.permit())
                    .await
                    .map_err(|_| Error::Timeout("no free session within the retry budget".into()))?;
                let session = match pool.take_idle() {
                    Some(s) => Some(s),
                    None => self.register_session().await?,
                };
                held = session.map(|s| (s, permit));
            }
            let tag = held.as_ref().map(|(s, _)| Seq { client_id: s.client_id(), seq: s.next_seq() });
            let mut sent = 0u32;
            let result = self
                .run_until(Route::Leader, deadline, |svc| {
                    sent += 1;
                    let mut request = tonic::Request::new(message.clone());
                    if let Some(tag) = tag {
                        request.extensions_mut().insert(tag);
                    }
                    attempt(svc, request)
                })
                .await;
            match result {
                Err(Error::SessionExpired { client_id }) => {
                    // The session is dropped (not given back); the permit is released.
                    drop(held);
                    if sent == 1 && !renewed && Instant::now() < deadline {
                        renewed = true;
                        continue;
                    }
                    return Err(Error::SessionExpired { client_id });
                }
                other => {
                    if let Some((session, _permit)) = held {
                        pool.put_back(session);
                    }
                    return other;
                }
            }
        }
    }
}

/// Runs futures concurrently and returns their outputs in order (a tiny `join_all`, to keep the
/// dependency list short).
pub(crate) async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Exponential back-off with jitter: pauses of `[cur/2, cur]`, `cur` doubling up to a cap.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
    /// xorshift state, seeded per instance from std's random hasher keys (no RNG dependency).
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x0062_616c_7361);
        Self { current: initial.max(Duration::from_millis(1)), max: max.max(initial), rng: h.finish() | 1 }
    }

    /// The longest the next pause can be.
    pub(crate) fn peek(&self) -> Duration {
        self.current
    }

    /// The next pause; doubles the ceiling for the one after.
    pub(crate) fn next_pause(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros().max(1) as u64;
        half + Duration::from_micros(self.rng % spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_and_tls_is_refused_clearly() {
        assert_eq!(normalise("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(normalise("http://a:1/").unwrap(), "http://a:1");
        assert!(matches!(normalise("https://a:1"), Err(Error::InvalidEndpoint(_))));
        assert!(matches!(normalise(""), Err(Error::InvalidEndpoint(_))));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_inside_the_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let pauses: Vec<_> = (0..6).map(|_| b.next_pause()).collect();
        let ceilings = [100, 200, 400, 400, 400, 400];
        for (p, c) in pauses.iter().zip(ceilings) {
            let c = Duration::from_millis(c);
            assert!(*p >= c / 2 && *p <= c, "{p:?} outside [{:?}, {c:?}]", c / 2);
        }
    }
}
