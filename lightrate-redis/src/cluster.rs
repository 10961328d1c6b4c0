//! Redis Cluster, one node at a time: the slot map kept here, a connection of its own per node,
//! and a failure of one node kept to the keys of its slots.
//!
//! redis-rs's `ClusterConnection` drives every node from one task, and while it refreshes its
//! slot map (after any node's error) it dispatches no request at all, to any node; a killed or
//! stalled primary thereby failed requests on the healthy ones. Here a command goes straight to
//! its slot's primary on that node's own multiplexed connection, bounded by the timeout; the
//! slot map is swapped whole when a refresh (started by `MOVED`, by a node's failure, and on
//! first use) has a new one, and no request ever waits for a refresh but the first.
//!
//! No command is sent twice when it may have run: only answers that Redis gives before running
//! anything are followed by another attempt: `MOVED` (once, on the node named), `CLUSTERDOWN`
//! and `TRYAGAIN` (again after a pause, while the timeout allows). A timeout, a lost connection
//! or `ASK` fail the call.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use lightrate_core::{Error, ErrorKind};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, Value};

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// No owner known for a slot.
const NO_OWNER: u16 = u16::MAX;

/// The first pause before a call refused with `CLUSTERDOWN` or `TRYAGAIN` is sent again
/// (doubling, within the timeout).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The least time between two topology refreshes started by failures.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (`{...}`, non-empty), modulo
/// 16384, as Redis Cluster computes it.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// Which primary serves each slot, and every node known (replicas too: any can be asked for the
/// slot map).
struct Topology {
    /// Index into `primaries` per slot, or [`NO_OWNER`].
    owners: Vec<u16>,
    primaries: Vec<String>,
    replicas: Vec<String>,
}

impl Topology {
    fn empty() -> Topology {
        Topology {
            owners: vec![NO_OWNER; SLOTS],
            primaries: Vec::new(),
            replicas: Vec::new(),
        }
    }

    fn owner(&self, slot: u16) -> Option<&str> {
        let index = *self.owners.get(usize::from(slot))?;
        self.primaries.get(usize::from(index)).map(String::as_str)
    }

    fn known(&self) -> bool {
        !self.primaries.is_empty()
    }

    /// A copy with `slot` served by `address` (a `MOVED` answer).
    fn moved(&self, slot: u16, address: &str) -> Topology {
        let mut primaries = self.primaries.clone();
        let index = match primaries.iter().position(|p| p == address) {
            Some(i) => i,
            None => {
                primaries.push(address.to_owned());
                primaries.len() - 1
            }
        };
        let mut owners = self.owners.clone();
        if let (Some(owner), Ok(index)) = (owners.get_mut(usize::from(slot)), u16::try_from(index))
        {
            *owner = index;
        }
        Topology {
            owners,
            primaries,
            replicas: self.replicas.clone(),
        }
    }

    /// The topology a `CLUSTER SLOTS` answer describes, from the node at `host` (which nodes
    /// may name with an empty host). `None` when it is not such an answer.
    fn parse(answer: &Value, host: &str) -> Option<Topology> {
        let Value::Array(ranges) = answer else {
            return None;
        };
        let mut topology = Topology::empty();
        let mut replicas = HashSet::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let primary = node_address(fields.get(2)?, host)?;
            let index = match topology.primaries.iter().position(|p| *p == primary) {
                Some(i) => i,
                None => {
                    topology.primaries.push(primary);
                    topology.primaries.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            topology.owners[start..=end].fill(index);
            for replica in fields.iter().skip(3) {
                if let Some(address) = node_address(replica, host) {
                    replicas.insert(address);
                }
            }
        }
        topology.replicas = replicas
            .into_iter()
            .filter(|r| !topology.primaries.contains(r))
            .collect();
        topology.known().then_some(topology)
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `host:port` of a node entry of `CLUSTER SLOTS` (`[host, port, id, ...]`).
fn node_address(value: &Value, queried_host: &str) -> Option<String> {
    let Value::Array(fields) = value else {
        return None;
    };
    let host = text(fields.first()?)?;
    let port = u16::try_from(int(fields.get(1)?)?).ok()?;
    let host = if host.is_empty() || host == "?" {
        queried_host.to_owned()
    } else {
        host
    };
    Some(format!("{host}:{port}"))
}

/// One node: its own connection (reconnecting by itself after I/O errors), and when it last
/// answered or failed.
struct Node {
    client: redis::Client,
    manager: RwLock<Option<ConnectionManager>>,
    /// Milliseconds since the cluster's epoch, plus one (0: never).
    last_ok: AtomicU64,
    last_failed: AtomicU64,
}

/// The cluster: seed nodes, the slot map, and a connection per node.
pub(crate) struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// The first seed's settings (credentials, TLS), for every node's connection.
    template: ConnectionInfo,
    seeds: Vec<String>,
    timeout: Duration,
    topology: RwLock<Arc<Topology>>,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Serialises the refresh on first use (later ones run in the background).
    first: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
    epoch: Instant,
}

/// What one attempt on a node came to.
pub(crate) enum Failure {
    /// A redis-rs error, for the caller to turn into a lightrate error.
    Redis(redis::RedisError),
    /// No answer within the timeout.
    TimedOut,
    /// A lightrate error already.
    Error(Error),
}

impl Cluster {
    /// A cluster whose seed nodes are `infos` (at `addresses`); no I/O until first use.
    pub(crate) fn new(
        infos: Vec<ConnectionInfo>,
        addresses: Vec<String>,
        timeout: Duration,
    ) -> Result<Cluster, Error> {
        let Some(template) = infos.first().cloned() else {
            return Err(Error::new(
                ErrorKind::Configuration,
                "a Redis Cluster needs at least one node URL",
            ));
        };
        let same = infos.iter().all(|info| {
            matches!(
                (info.addr(), template.addr()),
                (ConnectionAddr::Tcp(..), ConnectionAddr::Tcp(..))
                    | (ConnectionAddr::TcpTls { .. }, ConnectionAddr::TcpTls { .. })
            ) && info.redis_settings().username() == template.redis_settings().username()
                && info.redis_settings().password() == template.redis_settings().password()
        });
        if !same {
            return Err(Error::new(
                ErrorKind::Configuration,
                "invalid Redis Cluster URLs (all must use the same scheme and credentials, \
                 over TCP)",
            ));
        }
        Ok(Cluster {
            shared: Arc::new(Shared {
                template,
                seeds: addresses,
                timeout,
                topology: RwLock::new(Arc::new(Topology::empty())),
                nodes: Mutex::new(HashMap::new()),
                first: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
                last_refresh: Mutex::new(None),
                epoch: Instant::now(),
            }),
        })
    }

    /// Runs the script invocation on the primary of `key`'s slot. Follows one `MOVED`; starts a
    /// topology refresh after a redirect or a node's failure. A failure of one node while
    /// others answer is marked [`partial`](Error::partial).
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        key: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, (Failure, bool)> {
        let shared = &self.shared;
        let slot = slot(key.as_bytes());
        let mut address = match shared.owner(slot) {
            Some(address) => address,
            None => {
                shared.refresh_first().await.map_err(|e| (e, false))?;
                shared.owner(slot).ok_or_else(|| {
                    shared.refresh_soon();
                    (
                        Failure::Error(Error::new(
                            ErrorKind::Unavailable,
                            format!("no Redis Cluster node serves slot {slot}"),
                        )),
                        shared.others_answer(""),
                    )
                })?
            }
        };
        let mut redirected = false;
        let deadline = Instant::now() + shared.timeout;
        let mut pause = RETRY_PAUSE;
        loop {
            let node = shared
                .node(&address)
                .map_err(|e| (Failure::Error(e), false))?;
            let mut connection = node.connection(shared)?;
            let answer =
                tokio::time::timeout(shared.timeout, invocation.invoke_async(&mut connection))
                    .await;
            match answer {
                Ok(Ok(value)) => {
                    node.answered(shared);
                    return Ok(value);
                }
                Err(_) => {
                    node.failed(shared);
                    shared.refresh_soon();
                    return Err((Failure::TimedOut, shared.others_answer(&address)));
                }
                Ok(Err(e)) => {
                    use redis::ServerErrorKind as S;
                    match e.kind() {
                        redis::ErrorKind::Server(S::Moved) if !redirected => {
                            // The node answered: it is well, and the script did not run.
                            node.answered(shared);
                            shared.refresh_soon();
                            if let Some((to, moved_slot)) = e.redirect_node() {
                                let to = to.to_owned();
                                shared.moved(moved_slot, &to);
                                address = to;
                                redirected = true;
                                continue;
                            }
                            return Err((Failure::Redis(e), shared.others_answer(&address)));
                        }
                        redis::ErrorKind::Server(S::ClusterDown | S::TryAgain)
                            if Instant::now() + pause + RETRY_PAUSE < deadline =>
                        {
                            // Refused before the script ran (a cluster that is failing over,
                            // with `cluster-require-full-coverage yes`; a slot migrating): the
                            // same node again after a pause, within the timeout.
                            node.answered(shared);
                            shared.refresh_soon();
                            tokio::time::sleep(pause).await;
                            pause = pause.saturating_mul(2);
                            continue;
                        }
                        redis::ErrorKind::Server(S::ResponseError)
                        | redis::ErrorKind::Parse
                        | redis::ErrorKind::UnexpectedReturnType => {
                            node.answered(shared);
                            return Err((Failure::Redis(e), false));
                        }
                        _ => {
                            node.failed(shared);
                            if !e.is_io_error() && !e.is_timeout() {
                                // Not an error the manager reconnects on by itself: start
                                // afresh next time (after refused credentials, say).
                                node.forget();
                            }
                            shared.refresh_soon();
                            return Err((Failure::Redis(e), shared.others_answer(&address)));
                        }
                    }
                }
            }
        }
    }

    /// `PING` to every primary, at once: `Ok` when at least one answers (its keys are served).
    pub(crate) async fn ping(&self) -> Result<(), Failure> {
        let shared = &self.shared;
        shared.refresh_first().await?;
        let primaries = shared.current().primaries.clone();
        let mut pings = tokio::task::JoinSet::new();
        for address in primaries {
            let node = shared.node(&address).map_err(Failure::Error)?;
            let mut connection = node.connection(shared).map_err(|(f, _)| f)?;
            let timeout = shared.timeout;
            pings.spawn(async move {
                let command = redis::cmd("PING");
                let ping = command.query_async::<Value>(&mut connection);
                match tokio::time::timeout(timeout, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Failure::Redis(e)),
                    Err(_) => Err(Failure::TimedOut),
                }
            });
        }
        let mut last = Failure::Error(Error::new(
            ErrorKind::Unavailable,
            "no Redis Cluster primary known",
        ));
        while let Some(result) = pings.join_next().await {
            match result {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(failure)) => last = failure,
                Err(_) => {}
            }
        }
        shared.refresh_soon();
        Err(last)
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn current(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn owner(&self, slot: u16) -> Option<String> {
        self.current().owner(slot).map(str::to_owned)
    }

    fn moved(&self, slot: u16, address: &str) {
        let mut topology = self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if topology.owner(slot) != Some(address) {
            *topology = Arc::new(topology.moved(slot, address));
        }
    }

    /// The node at `address` (`host:port`), its connection set up on first use.
    fn node(&self, address: &str) -> Result<Arc<Node>, Error> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(address) {
            return Ok(node.clone());
        }
        let invalid = || {
            Error::new(
                ErrorKind::Internal,
                "the Redis Cluster named a node address that cannot be used",
            )
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let client =
            redis::Client::open(self.template.clone().set_addr(addr)).map_err(|_| invalid())?;
        let node = Arc::new(Node {
            client,
            manager: RwLock::new(None),
            last_ok: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
        });
        nodes.insert(address.to_owned(), node.clone());
        Ok(node)
    }

    /// Whether another primary than `address` is not failing (it answered since its last
    /// failure, or has not been asked yet): then a failure of `address` is its own, not the
    /// cluster's. When every primary fails, so does the cluster.
    fn others_answer(&self, address: &str) -> bool {
        let topology = self.current();
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        topology
            .primaries
            .iter()
            .filter(|other| *other != address)
            .any(|other| {
                nodes.get(other).is_none_or(|node| {
                    node.last_failed.load(Ordering::Relaxed) <= node.last_ok.load(Ordering::Relaxed)
                })
            })
    }

    /// The first refresh, awaited (one at a time) when no slot map is known yet.
    async fn refresh_first(self: &Arc<Self>) -> Result<(), Failure> {
        if self.current().known() {
            return Ok(());
        }
        let _first = self.first.lock().await;
        if self.current().known() {
            return Ok(());
        }
        self.refresh().await
    }

    /// Starts a refresh in the background, unless one is running or one started within
    /// [`REFRESH_GAP`].
    fn refresh_soon(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut last = self
                .last_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < REFRESH_GAP) {
                return;
            }
            if self.refreshing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let shared = self.clone();
        runtime.spawn(async move {
            let refreshed = shared.refresh().await;
            shared.refreshing.store(false, Ordering::Release);
            if let Err(Failure::Error(e)) = refreshed {
                tracing::debug!(target: "lightrate::redis", error = %e, "cluster topology refresh failed");
            }
        });
    }

    /// Asks every known node (primaries, replicas, seeds) at once for the slot map, and takes
    /// the first whole answer.
    async fn refresh(self: &Arc<Self>) -> Result<(), Failure> {
        let known = self.current();
        let mut candidates: Vec<String> = Vec::new();
        for address in known
            .primaries
            .iter()
            .chain(&known.replicas)
            .chain(&self.seeds)
        {
            if !candidates.contains(address) {
                candidates.push(address.clone());
            }
        }
        let mut asks = tokio::task::JoinSet::new();
        for address in candidates {
            let node = match self.node(&address) {
                Ok(node) => node,
                Err(_) => continue,
            };
            let Ok(mut connection) = node.connection(self) else {
                continue;
            };
            let timeout = self.timeout;
            let shared = self.clone();
            asks.spawn(async move {
                let mut command = redis::cmd("CLUSTER");
                command.arg("SLOTS");
                let ask = command.query_async::<Value>(&mut connection);
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h);
                match tokio::time::timeout(timeout, ask).await {
                    Ok(Ok(answer)) => {
                        node.answered(&shared);
                        Topology::parse(&answer, host).ok_or(Failure::Error(Error::new(
                            ErrorKind::Decode,
                            "an unreadable CLUSTER SLOTS answer",
                        )))
                    }
                    Ok(Err(e)) => {
                        if !e.is_io_error() && !e.is_timeout() {
                            node.forget();
                        }
                        Err(Failure::Redis(e))
                    }
                    Err(_) => Err(Failure::TimedOut),
                }
            });
        }
        let mut last = Failure::Error(Error::new(
            ErrorKind::Network,
            "no Redis Cluster node could be reached",
        ));
        while let Some(result) = asks.join_next().await {
            match result {
                Ok(Ok(topology)) => {
                    *self
                        .topology
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
                    return Ok(());
                }
                Ok(Err(failure)) => last = failure,
                Err(_) => {}
            }
        }
        Err(last)
    }
}

impl Node {
    /// The node's connection manager (made lazily: connecting happens on the first command).
    fn connection(&self, shared: &Shared) -> Result<ConnectionManager, (Failure, bool)> {
        if let Some(manager) = &*self.manager.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(manager.clone());
        }
        let mut slot = self.manager.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = &*slot {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(shared.timeout))
            .set_response_timeout(Some(shared.timeout))
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| (Failure::Redis(e), false))?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    fn forget(&self) {
        *self.manager.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn answered(&self, shared: &Shared) {
        self.last_ok.store(shared.now_ms(), Ordering::Relaxed);
    }

    fn failed(&self, shared: &Shared) {
        self.last_failed.store(shared.now_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis() {
        // From `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn a_cluster_slots_answer_is_a_slot_map() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8000),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![Value::Int(8001), Value::Int(16383), node("", 7002)]),
        ]);
        let topology = Topology::parse(&answer, "10.0.0.9").unwrap();
        assert_eq!(topology.owner(0), Some("10.0.0.1:7000"));
        assert_eq!(topology.owner(8000), Some("10.0.0.1:7000"));
        assert_eq!(topology.owner(8001), Some("10.0.0.9:7002"));
        assert_eq!(topology.owner(16383), Some("10.0.0.9:7002"));
        assert_eq!(topology.replicas, ["10.0.0.2:7001"]);
        let moved = topology.moved(5, "10.0.0.2:7001");
        assert_eq!(moved.owner(5), Some("10.0.0.2:7001"));
        assert_eq!(moved.owner(6), Some("10.0.0.1:7000"));
        assert!(Topology::parse(&Value::Int(3), "h").is_none());
        assert!(Topology::parse(&Value::Array(vec![]), "h").is_none());
        let bad = Value::Array(vec![Value::Array(vec![
            Value::Int(9),
            Value::Int(20000),
            node("h", 1),
        ])]);
        assert!(Topology::parse(&bad, "h").is_none());
    }
}
