//! The connection to Redis or Redis Cluster: made on first use, remade after failures, and
//! every redis-rs error turned into a lightrate [`Error`] that names no credentials.

use std::time::Duration;

use lightrate_core::{Error, ErrorKind};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo};
use std::sync::{PoisonError, RwLock};

use crate::cluster::{Cluster, Failure};

/// Where the connection goes, and the connection once made.
pub(crate) struct Connection {
    client: Client,
    timeout: Duration,
    /// Secrets to scrub from error messages (the URLs' passwords).
    secrets: Vec<String>,
    /// The single node's connection manager: reconnects by itself after I/O errors; replaced
    /// after an error it would not recover from (refused credentials, say).
    single: RwLock<Option<ConnectionManager>>,
}

// One per source, behind its `Arc`: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    /// A connection per node, and the slot map (see the `cluster` module).
    Cluster(Cluster),
}

impl Connection {
    /// A connection to the Redis at `url`; no I/O until first use.
    pub(crate) fn single(url: &str, timeout: Duration) -> Result<(Connection, String), Error> {
        let (info, address, secret) = parse(url)?;
        let client = redis::Client::open(info).map_err(|_| invalid_url())?;
        Ok((
            Connection {
                client: Client::Single(client),
                timeout,
                secrets: secret.into_iter().collect(),
                single: RwLock::new(None),
            },
            address,
        ))
    }

    /// A connection to the Redis Cluster whose seed nodes are `urls`; no I/O until first use.
    pub(crate) fn cluster(
        urls: &[&str],
        timeout: Duration,
    ) -> Result<(Connection, Vec<String>), Error> {
        if urls.is_empty() {
            return Err(Error::new(
                ErrorKind::Configuration,
                "a Redis Cluster needs at least one node URL",
            ));
        }
        let mut infos = Vec::with_capacity(urls.len());
        let mut addresses = Vec::with_capacity(urls.len());
        let mut secrets = Vec::new();
        for url in urls {
            let (info, address, secret) = parse(url)?;
            infos.push(info);
            addresses.push(address);
            secrets.extend(secret);
        }
        let cluster = Cluster::new(infos, addresses.clone(), timeout)?;
        Ok((
            Connection {
                client: Client::Cluster(cluster),
                timeout,
                secrets,
                single: RwLock::new(None),
            },
            addresses,
        ))
    }

    /// Runs the script `invocation` on `key`'s node, within the timeout. A cluster node's
    /// failure while other nodes answer is a [`partial`](Error::partial) outage. Never sent
    /// twice when it may have run (see the `cluster` module).
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        key: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        match &self.client {
            Client::Single(client) => {
                let call = async {
                    let mut manager = self.manager(client)?;
                    invocation
                        .invoke_async(&mut manager)
                        .await
                        .map_err(|e| self.failed(&e))
                };
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(answer) => answer,
                    Err(_) => Err(self.timed_out()),
                }
            }
            Client::Cluster(cluster) => {
                let call = cluster.invoke(key, invocation);
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err((failure, partial))) => {
                        let e = self.failure(failure);
                        Err(if partial && e.is_outage() {
                            e.partial()
                        } else {
                            e
                        })
                    }
                    Err(_) => Err(self.timed_out()),
                }
            }
        }
    }

    /// `PING`, within the timeout: the single node, or the cluster's primaries (`Ok` when any
    /// answers: its keys are served).
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let ping = async {
            match &self.client {
                Client::Single(client) => {
                    let mut manager = self.manager(client)?;
                    redis::cmd("PING")
                        .query_async::<redis::Value>(&mut manager)
                        .await
                        .map(drop)
                        .map_err(|e| self.failed(&e))
                }
                Client::Cluster(cluster) => cluster.ping().await.map_err(|f| self.failure(f)),
            }
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn failure(&self, failure: Failure) -> Error {
        match failure {
            Failure::Redis(e) => self.error(&e),
            Failure::TimedOut => self.timed_out(),
            Failure::Error(e) => e,
        }
    }

    /// The single node's manager, made on first use.
    fn manager(&self, client: &redis::Client) -> Result<ConnectionManager, Error> {
        let current = self
            .single
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match current {
            Some(manager) => Ok(manager),
            None => self.new_manager(client),
        }
    }

    /// A manager that connects on first use. No retries of its own: a failed attempt fails
    /// the calls waiting on it at once (an outage error, not a wait for the timeout), and the
    /// next call tries again.
    fn new_manager(&self, client: &redis::Client) -> Result<ConnectionManager, Error> {
        let mut slot = self.single.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = &*slot {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| self.error(&e))?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    /// [`error`](Self::error), and forgets the single node's connection manager when the
    /// error is one it keeps returning instead of reconnecting (anything but I/O failures,
    /// which it handles itself, and answers to the script).
    pub(crate) fn failed(&self, e: &redis::RedisError) -> Error {
        use redis::ErrorKind as K;
        let sticky = !e.is_io_error()
            && !matches!(
                e.kind(),
                K::Server(redis::ServerErrorKind::ResponseError)
                    | K::Parse
                    | K::UnexpectedReturnType
            );
        if sticky {
            *self.single.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.error(e)
    }

    /// A lightrate error for a redis-rs error: an outage kind for what a working Redis would
    /// not say (I/O, timeouts, a cluster that is down, a server that is loading), a
    /// configuration error for refused credentials. The message never holds a password.
    pub(crate) fn error(&self, e: &redis::RedisError) -> Error {
        use redis::ErrorKind as K;
        use redis::ServerErrorKind as S;
        if e.is_timeout() {
            return self.timed_out();
        }
        let kind = {
            match e.kind() {
                K::Io | K::ClusterConnectionNotFound => ErrorKind::Network,
                K::AuthenticationFailed | K::InvalidClientConfig => ErrorKind::Configuration,
                K::Server(S::NoPerm) => ErrorKind::Configuration,
                K::Extension if matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) => {
                    ErrorKind::Configuration
                }
                K::Server(
                    S::TryAgain | S::ClusterDown | S::MasterDown | S::BusyLoading | S::ReadOnly,
                ) => ErrorKind::Unavailable,
                K::Parse | K::UnexpectedReturnType => ErrorKind::Decode,
                _ => ErrorKind::Internal,
            }
        };
        let mut message = format!("Redis: {e}");
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "[redacted]");
        }
        Error::new(kind, message)
    }

    /// The error for a command that took longer than the timeout.
    pub(crate) fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ),
        )
    }
}

fn invalid_url() -> Error {
    // The URL is not repeated: it may hold a password.
    Error::new(
        ErrorKind::Configuration,
        "invalid Redis URL (expected redis://[user:password@]host[:port][/db], rediss://... \
         or unix:///path)",
    )
}

/// Parses `url`: its connection info, `host:port` (or the socket path) for display, and its
/// password if it has one.
fn parse(url: &str) -> Result<(redis::ConnectionInfo, String, Option<String>), Error> {
    let info = url
        .trim()
        .into_connection_info()
        .map_err(|_| invalid_url())?;
    let address = match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => format!("unix:{}", path.display()),
        _ => return Err(invalid_url()),
    };
    let secret = info
        .redis_settings()
        .password()
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    Ok((info, address, secret))
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.client {
            Client::Single(_) => "single",
            Client::Cluster(_) => "cluster",
        };
        f.debug_struct("Connection")
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
