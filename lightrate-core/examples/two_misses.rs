//! Two misses, one round trip: `Limiter::check_all` for users nobody has seen, whose two limits
//! (10 a second, and 1 000 a day) must both ask a source 20 ms away (the embedded source behind
//! a 10 ms sleep each way, on tokio's real clock). The two calls go out concurrently, so a
//! decision should take one round trip (~20 ms), not two. For reference, the same users with
//! one limit (`check`), and with the two limits asked one after the other (two `check`s).
//!
//! ```text
//! cargo run --release -p lightrate-core --example two_misses [users] [delay_ms]
//! ```
//!
//! Prints p50, p99 and the slowest of each, over 200 users (or `users`), one user at a time.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, Error, Limit, Limiter, RefillRate,
    RuleSet, Target, TokenSource,
};

/// The embedded source `delay` away: half the delay on the way there, half on the way back.
struct Away {
    inner: EmbeddedSource,
    delay: Duration,
}

impl TokenSource for Away {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        tokio::time::sleep(self.delay / 2).await;
        let answer = self.inner.consume_now(request);
        tokio::time::sleep(self.delay / 2).await;
        answer
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<36} n={:<4} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        times.len(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap()),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let users: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(200);
    let delay_ms: u64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(20);
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("per second", "^per_second$", RefillRate::per_second(10), 20)
        .operation("per day", "^per_day$", RefillRate::per_day(1000), 1000)
        .build()
        .unwrap();
    let limiter = Limiter::new(Away {
        inner: EmbeddedSource::new(rules),
        delay: Duration::from_millis(delay_ms),
    });
    let (second, day) = (
        Target::operation("per_second"),
        Target::operation("per_day"),
    );
    // The rules learned once, so that every user below is a miss on a known rule.
    let warm = [
        Limit::new("warm-up", second.clone()),
        Limit::new("warm-up", day.clone()),
    ];
    assert!(limiter.check_all(&warm).await.unwrap().is_allowed());

    let mut two = Vec::with_capacity(users);
    for i in 0..users {
        let user = format!("two-{i}");
        let limits = [
            Limit::new(&user, second.clone()),
            Limit::new(&user, day.clone()),
        ];
        let start = Instant::now();
        let decisions = limiter.check_all(&limits).await.unwrap();
        two.push(start.elapsed());
        assert!(decisions.is_allowed());
    }
    let mut one = Vec::with_capacity(users);
    for i in 0..users {
        let user = format!("one-{i}");
        let start = Instant::now();
        let decision = limiter.check(&user, &second).await.unwrap();
        one.push(start.elapsed());
        assert!(decision.is_allowed());
    }
    let mut in_turn = Vec::with_capacity(users);
    for i in 0..users {
        let user = format!("in-turn-{i}");
        let start = Instant::now();
        let first = limiter.check(&user, &second).await.unwrap();
        let then = limiter.check(&user, &day).await.unwrap();
        in_turn.push(start.elapsed());
        assert!(first.is_allowed() && then.is_allowed());
    }
    println!("source {delay_ms} ms away, {users} users nobody has seen, one at a time:");
    report("two limits, check_all", two);
    report("one limit, check", one);
    report("two limits, two checks in turn", in_turn);
}
