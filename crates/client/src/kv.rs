//! Keys and values: put, get, delete, transactions, compaction.

use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::kv_client::KvClient;

pub use crate::pb::range_request::{SortOrder, SortTarget};

/// A key with its value and revisions (etcd's `mvccpb.KeyValue`).
pub type KeyValue = crate::mvccpb::KeyValue;

/// The smallest key after every key that starts with `prefix` (etcd's convention: `"\0"`, "from
/// the key on", when there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys a call covers, besides the key itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Span {
    /// Just the key.
    #[default]
    Key,
    /// Every key starting with the key.
    Prefix,
    /// `[key, end)`.
    Until(Vec<u8>),
    /// Every key from the key on.
    FromKey,
}

impl Span {
    /// etcd's spelling of "every key": an empty key with a prefix or from-key span becomes
    /// `"\0"` (the empty key is not a valid key).
    fn key(&self, key: Vec<u8>) -> Vec<u8> {
        match self {
            Span::Prefix | Span::FromKey if key.is_empty() => vec![0],
            _ => key,
        }
    }

    fn range_end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            Span::Key => Vec::new(),
            Span::Prefix => prefix_end(key),
            Span::Until(end) => end.clone(),
            Span::FromKey => vec![0],
        }
    }
}

/// Options of [`Client::get`]; the default reads one key, linearizably, at the current revision.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    span: Span,
    revision: i64,
    limit: i64,
    sort: Option<(SortTarget, SortOrder)>,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
}

/// The key-span choices shared by reads and deletes.
macro_rules! span_options {
    ($options:ty) => {
        impl $options {
            /// Every key starting with the key.
            pub fn prefix(mut self) -> Self {
                self.span = Span::Prefix;
                self
            }
            /// Keys in `[key, end)`.
            pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
                self.span = Span::Until(end.into());
                self
            }
            /// Every key from the key on.
            pub fn from_key(mut self) -> Self {
                self.span = Span::FromKey;
                self
            }
        }
    };
}

span_options!(GetOptions);
span_options!(DeleteOptions);

impl GetOptions {
    /// Reads one key, linearizably.
    pub fn new() -> Self {
        Self::default()
    }
    /// Read as of `revision` (0: now).
    pub fn revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    /// At most `limit` keys (0: no limit); `more` tells whether there were others.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    /// Sort by `target` in `order`.
    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }
    /// Leave the values out.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    /// Only count the keys.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    /// Let any member answer from what it has applied (may be stale; no round to the leader).
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }

    pub(crate) fn request(&self, key: impl Into<Vec<u8>>) -> pb::RangeRequest {
        let key = key.into();
        let (target, order) = self.sort.unwrap_or((SortTarget::Key, SortOrder::None));
        pb::RangeRequest {
            range_end: self.span.range_end(&key),
            key: self.span.key(key),
            limit: self.limit,
            revision: self.revision,
            sort_order: order as i32,
            sort_target: target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// Options of [`Client::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
}

impl PutOptions {
    /// A plain put.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attach the key to lease `id`: it goes when the lease does.
    pub fn lease(mut self, id: i64) -> Self {
        self.lease = id;
        self
    }
    /// Return the previous key-value.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub(crate) fn request(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> pb::PutRequest {
        let (key, value) = (key.into(), value.into());
        pb::PutRequest { key, value, lease: self.lease, prev_kv: self.prev_kv, ..Default::default() }
    }
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    /// Deletes one key.
    pub fn new() -> Self {
        Self::default()
    }
    /// Return the deleted key-values.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub(crate) fn request(&self, key: impl Into<Vec<u8>>) -> pb::DeleteRangeRequest {
        let key = key.into();
        pb::DeleteRangeRequest {
            range_end: self.span.range_end(&key),
            key: self.span.key(key),
            prev_kv: self.prev_kv,
        }
    }
}

/// The answer to a get.
#[derive(Debug, Clone, PartialEq)]
pub struct GetResponse {
    /// The store's revision when read.
    pub revision: i64,
    /// The keys found (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` left keys out.
    pub more: bool,
    /// How many keys are in the range (regardless of `limit`).
    pub count: i64,
}

/// The answer to a put.
#[derive(Debug, Clone, PartialEq)]
pub struct PutResponse {
    /// The revision of this write.
    pub revision: i64,
    /// The previous key-value, if asked for and there was one.
    pub prev_kv: Option<KeyValue>,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteResponse {
    /// The store's revision after the delete.
    pub revision: i64,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

fn revision(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

impl From<pb::RangeResponse> for GetResponse {
    fn from(r: pb::RangeResponse) -> Self {
        Self { revision: revision(&r.header), kvs: r.kvs, more: r.more, count: r.count }
    }
}
impl From<pb::PutResponse> for PutResponse {
    fn from(r: pb::PutResponse) -> Self {
        Self { revision: revision(&r.header), prev_kv: r.prev_kv }
    }
}
impl From<pb::DeleteRangeResponse> for DeleteResponse {
    fn from(r: pb::DeleteRangeResponse) -> Self {
        Self { revision: revision(&r.header), deleted: r.deleted, prev_kvs: r.prev_kvs }
    }
}

/// How a [`Compare`] relates the key's field to the given value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl CompareOp {
    fn wire(self) -> i32 {
        use pb::compare::CompareResult as R;
        (match self {
            CompareOp::Equal => R::Equal,
            CompareOp::NotEqual => R::NotEqual,
            CompareOp::Greater => R::Greater,
            CompareOp::Less => R::Less,
        }) as i32
    }
}

/// One condition of a transaction. A key that does not exist has version, create and mod
/// revision 0 and lease 0; a value compare on it is false.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pub(crate) pb::Compare);

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: pb::compare::TargetUnion) -> Self {
        use pb::compare::{CompareTarget as T, TargetUnion as U};
        let t = match target {
            U::Version(_) => T::Version,
            U::CreateRevision(_) => T::Create,
            U::ModRevision(_) => T::Mod,
            U::Value(_) => T::Value,
            U::Lease(_) => T::Lease,
        };
        Self(pb::Compare {
            result: op.wire(),
            target: t as i32,
            key: key.into(),
            target_union: Some(target),
            range_end: Vec::new(),
        })
    }
    /// Compare every key starting with the key instead of the key alone: the compare holds if it
    /// holds for each of them (etcd's range compare). With `mod_revision(prefix, Less, rev + 1)`
    /// it says "no key under the prefix changed, or appeared, after `rev`".
    pub fn prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }

    /// Compare the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Value(value.into()))
    }
    /// Compare the key's version (number of puts since creation; 0: absent).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Version(version))
    }
    /// Compare the revision that created the key.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::CreateRevision(revision))
    }
    /// Compare the revision of the key's last change.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::ModRevision(revision))
    }
    /// Compare the key's lease.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Lease(lease))
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(pub(crate) pb::RequestOp);

impl TxnOp {
    /// A get with options (its `serializable` is ignored: a transaction reads in place).
    pub fn get(key: impl Into<Vec<u8>>, options: GetOptions) -> Self {
        Self(pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(options.request(key))) })
    }
    /// A put with options.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> Self {
        Self(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(options.request(key, value))),
        })
    }
    /// A delete with options.
    pub fn delete(key: impl Into<Vec<u8>>, options: DeleteOptions) -> Self {
        let r = pb::request_op::Request::RequestDeleteRange(options.request(key));
        Self(pb::RequestOp { request: Some(r) })
    }
}

/// A transaction: if every compare holds, the `then` operations run, else the `otherwise` ones,
/// all at one revision.
///
/// ```
/// use balsa_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
/// let txn = Txn::new()
///     .when([Compare::value("config/mode", CompareOp::Equal, "blue")])
///     .and_then([TxnOp::put("config/mode", "green", PutOptions::new())])
///     .or_else([TxnOp::get("config/mode", GetOptions::new())]);
/// # let _ = txn;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no compares: the `then` branch runs).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }
    /// Adds operations run if the conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }
    /// Adds operations run otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
    fn request(self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compares.into_iter().map(|c| c.0).collect(),
            success: self.success.into_iter().map(|o| o.0).collect(),
            failure: self.failure.into_iter().map(|o| o.0).collect(),
        }
    }
}

/// The answer of one transaction operation.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOpResponse {
    /// A get's answer.
    Get(GetResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    Delete(DeleteResponse),
    /// A nested transaction (not built by [`Txn`], but a server may answer one).
    Txn(TxnResponse),
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnResponse {
    /// The store's revision after the transaction.
    pub revision: i64,
    /// Whether the compares held (the `then` branch ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

impl From<pb::TxnResponse> for TxnResponse {
    fn from(r: pb::TxnResponse) -> Self {
        use pb::response_op::Response as R;
        let responses = r
            .responses
            .into_iter()
            .filter_map(|op| op.response)
            .map(|op| match op {
                R::ResponseRange(g) => TxnOpResponse::Get(g.into()),
                R::ResponsePut(p) => TxnOpResponse::Put(p.into()),
                R::ResponseDeleteRange(d) => TxnOpResponse::Delete(d.into()),
                R::ResponseTxn(t) => TxnOpResponse::Txn(t.into()),
            })
            .collect();
        Self { revision: revision(&r.header), succeeded: r.succeeded, responses }
    }
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse> {
        let r = self
            .write(options.request(key, value), |svc, request| async move {
                KvClient::new(svc).put(request).await
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Reads `key` (or a range of keys: see [`GetOptions`]).
    pub async fn get(&self, key: impl Into<Vec<u8>>, options: GetOptions) -> Result<GetResponse> {
        let route = if options.serializable { Route::Any } else { Route::Leader };
        let request = options.request(key);
        let r = self
            .run(route, |svc| {
                let request = request.clone();
                async move { KvClient::new(svc).range(request).await }
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// The value of `key`, if it exists (a linearizable read).
    pub async fn get_value(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let r = self.get(key, GetOptions::new()).await?;
        Ok(r.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Deletes `key` (or a range: see [`DeleteOptions`]).
    pub async fn delete(&self, key: impl Into<Vec<u8>>, options: DeleteOptions) -> Result<DeleteResponse> {
        let r = self
            .write(options.request(key), |svc, request| async move {
                KvClient::new(svc).delete_range(request).await
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let r = self
            .write(txn.request(), |svc, request| async move { KvClient::new(svc).txn(request).await })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Drops history before `revision` (reads and watches of older revisions then fail with
    /// [`Error::Compacted`]). Returns the store's revision.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64> {
        if revision <= 0 {
            return Err(Error::InvalidArgument(format!(
                "compact: revision must be positive, got {revision}"
            )));
        }
        let request = pb::CompactionRequest { revision, physical };
        let r =
            self.run(Route::Leader, |svc| async move { KvClient::new(svc).compact(request).await }).await?;
        Ok(revision_of(r.into_inner().header))
    }
}

pub(crate) fn revision_of(h: Option<pb::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"foo"), b"fop");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn options_build_etcd_requests() {
        let r = GetOptions::new().prefix().limit(2).sort(SortTarget::Mod, SortOrder::Descend).request("k/");
        assert_eq!((r.key.as_slice(), r.range_end.as_slice(), r.limit), (&b"k/"[..], &b"k0"[..], 2));
        assert_eq!((r.sort_target, r.sort_order), (SortTarget::Mod as i32, SortOrder::Descend as i32));
        let d = DeleteOptions::new().from_key().prev_kv().request("a");
        assert_eq!((d.range_end, d.prev_kv), (vec![0], true));
        let all = GetOptions::new().prefix().request("");
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
    }
}
