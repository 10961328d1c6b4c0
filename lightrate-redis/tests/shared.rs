//! Two sources, one bucket: on one Redis and on a three-node Redis Cluster.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use lightrate_core::{ManualClock, RuleSet, Target};
use lightrate_redis::test_util::{RedisCluster, RedisServer};
use lightrate_redis::RedisSource;
use redis::AsyncCommands;

use support::grant;

/// 12 calls alternating between `a` and `b` for one user: exactly the burst (10) granted, and
/// `tokensRemaining` counting down across both.
async fn alternate(a: &RedisSource, b: &RedisSource, user: &str) {
    let email = Target::operation("send_email"); // burst 10
    let mut answers = Vec::new();
    for i in 0..12 {
        let source = if i % 2 == 0 { a } else { b };
        answers.push(grant(source, user, &email, 1).await);
    }
    let expected: Vec<(u64, u64)> = (0..12)
        .map(|i| if i < 10 { (1, 9 - i) } else { (0, 0) })
        .collect();
    assert_eq!(answers, expected);
}

fn pair(build: impl Fn(&ManualClock) -> RedisSource) -> (RedisSource, RedisSource) {
    // Each source has its own clock handle, both at the same time: two processes.
    let clock = ManualClock::new();
    (build(&clock), build(&clock))
}

#[tokio::test]
async fn two_sources_on_one_redis_share_one_bucket() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(|clock| {
        RedisSource::builder(RuleSet::demo())
            .application_id("shared")
            .clock(clock.clone())
            .connect(&redis.url())
            .unwrap()
    });
    alternate(&a, &b, "alice").await;
    // Another application id is another bucket.
    let other = RedisSource::builder(RuleSet::demo())
        .application_id("other")
        .connect(&redis.url())
        .unwrap();
    assert_eq!(
        grant(&other, "alice", &Target::operation("send_email"), 1).await,
        (1, 9)
    );
}

#[tokio::test]
async fn two_sources_on_redis_time_share_one_bucket() {
    // No test clock: Redis TIME is the one clock both use (1 token per 1000 s, so none accrue
    // during the test).
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rules = RuleSet::from_toml_str(
        "[default]\nrefill_rate = 1\nburst_rate = 5\n\
         [[rules]]\nid = 'rule_send_email'\nname = 'Send Email'\nmatcher = '^send_email$'\n\
         refill_rate = 0.001\nburst_rate = 10\n",
    )
    .unwrap();
    let connect = || RedisSource::connect(&redis.url(), rules.clone()).unwrap();
    alternate(&connect(), &connect(), "bob").await;
}

#[tokio::test]
async fn a_three_node_cluster_shares_buckets_and_spreads_keys() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let (a, b) = pair(|clock| {
        RedisSource::builder(RuleSet::demo())
            .application_id("shared")
            .clock(clock.clone())
            .connect_cluster(&urls)
            .unwrap()
    });
    assert_eq!(a.addresses().len(), 3);
    alternate(&a, &b, "alice").await;
    alternate(&b, &a, "{alice}").await;
    // Buckets of many users land on every node.
    let hello = Target::path(lightrate_core::http::Method::GET, "/hello");
    for i in 0..60 {
        assert_eq!(grant(&a, &format!("user-{i}"), &hello, 1).await, (1, 19));
    }
    for node in cluster.nodes() {
        let mut connection = support::redis(&node.url()).await;
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(size >= 5, "node {} holds {size} of 62 keys", node.port());
        let keys: Vec<String> = connection.keys("lightrate:shared:*").await.unwrap();
        assert_eq!(keys.len() as u64, size);
    }
}
