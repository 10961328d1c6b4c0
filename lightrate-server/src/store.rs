//! [`TokenStore`]: where a server keeps its buckets.

use std::fmt;
use std::future::Future;

use lightrate_core::{EmbeddedSource, Error, ErrorKind, RuleSet, TokenSource};
#[cfg(feature = "redis")]
use lightrate_redis::RedisSource;

/// Where a server keeps its buckets: a [`TokenSource`] that can also say whether it can answer
/// (`GET /health`). Implemented by [`EmbeddedSource`] (in memory, always healthy) and
/// [`RedisSource`] (healthy while Redis answers `PING`).
///
/// ```
/// use lightrate_core::{EmbeddedSource, RuleSet};
/// use lightrate_server::TokenStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(EmbeddedSource::new(RuleSet::demo()).health().await.is_ok());
/// # }
/// ```
pub trait TokenStore: TokenSource + fmt::Debug {
    /// `Ok` when the store can answer consumes now, else the error that says why not.
    fn health(&self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// Serves `rules` from now on, keeping the buckets of the rules still there (by id); on an
    /// error the rules in force stay. The default refuses (kind `Configuration`): a store
    /// that cannot change its rules.
    fn replace_rules(&self, rules: RuleSet) -> Result<(), Error> {
        drop(rules);
        Err(Error::new(
            ErrorKind::Configuration,
            "this store cannot replace its rules",
        ))
    }

    /// How many buckets the store holds, when that is cheap to know (`None`: not reported).
    fn live_buckets(&self) -> Option<u64> {
        None
    }
}

impl TokenStore for EmbeddedSource {
    fn replace_rules(&self, rules: RuleSet) -> Result<(), Error> {
        EmbeddedSource::replace_rules(self, rules);
        Ok(())
    }

    fn live_buckets(&self) -> Option<u64> {
        Some(self.stats().buckets)
    }
}

/// Not [`live_buckets`](TokenStore::live_buckets): Redis has no cheap count of one prefix's
/// keys (`DBSIZE` counts every key of the database, `SCAN` walks all of them, on every node of
/// a cluster).
#[cfg(feature = "redis")]
impl TokenStore for RedisSource {
    fn health(&self) -> impl Future<Output = Result<(), Error>> + Send {
        self.ping()
    }

    fn replace_rules(&self, rules: RuleSet) -> Result<(), Error> {
        RedisSource::replace_rules(self, rules)
    }
}
