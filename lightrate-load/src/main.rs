//! `lightrate-load`: drives a demo app (and, through it, its token source) the way a soak or
//! an attack would, and reports what a user sees.
//!
//! `lightrate-load soak --help` and `lightrate-load user --help` list the options.
//!
//! `user` is one user's traffic: N requests one after the other with a pause between them
//! (paced), or N clients each sending as fast as it is answered for S seconds (concurrent).
//! It prints one line: requests, 200s, 429s, other answers, p50/p90/p99 latency, requests per
//! second, and the source calls the server counted meanwhile, per request. With
//! `--first-ms MS` (repeatable), also the latencies of the requests sent in the first MS
//! milliseconds, a line each: a cold start measured per request, where wrk's first-second
//! statistics are of a run cut short.
//!
//! Every minute it prints one line: requests, 200s, 429s, errors (anything else, and failed
//! connections), p50 and p99 latency, the resident memory of the app and the server (from
//! `/proc`, when their pids are given), and the source calls per request (from the server's
//! `lightrate_server_consume_requests_total` on `GET /metrics`, when it has one); under a
//! minute with errors, what they were (`HTTP 503`, `timeout`, or a failed request's cause).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

/// The command line: a soak, or one user's traffic.
#[derive(Debug, Parser)]
#[command(
    name = "lightrate-load",
    version,
    about = "Drives a demo app (and, through it, its token source) the way a soak or an attack \
             would, and reports what a user sees.",
    disable_help_subcommand = true,
    arg_required_else_help = true
)]
enum Cli {
    /// Sends a steady stream of requests from new users (each seen once) plus a hot set of
    /// users (seen again and again) to an app, and prints one line a minute.
    Soak(Options),
    /// One user's requests, paced (N requests, each MS after the previous answer) or
    /// concurrent (N clients as fast as answered for S seconds); one line with the answers,
    /// p50/p90/p99 latency, requests per second and source calls per request.
    User(UserRun),
}

/// `lightrate-load soak`.
#[derive(Debug, clap::Args)]
struct Options {
    /// The app's base URL, e.g. http://127.0.0.1:3000.
    #[arg(long, value_name = "URL")]
    app: String,
    /// The route to request.
    #[arg(long, default_value = "/hello")]
    path: String,
    /// The token server's base URL, for calls per request (its /metrics).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The app's pid, for its resident memory.
    #[arg(long, value_name = "PID")]
    app_pid: Option<u32>,
    /// The token server's pid, for its resident memory.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// How long, in minutes.
    #[arg(long, value_name = "N", default_value_t = 10)]
    minutes: u64,
    /// Requests a second from users never seen before.
    #[arg(long = "new-users-per-second", value_name = "N", default_value_t = 200)]
    new_per_second: u64,
    /// How many users make up the hot set (at least 1).
    #[arg(long, value_name = "N", default_value_t = 50)]
    hot_users: u64,
    /// Requests a second from the hot set.
    #[arg(
        long = "hot-requests-per-second",
        value_name = "N",
        default_value_t = 800
    )]
    hot_per_second: u64,
    /// Requests in flight at most (at least 1).
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
}

/// What one minute saw.
#[derive(Default)]
struct Minute {
    ok: AtomicU64,
    limited: AtomicU64,
    errors: AtomicU64,
    /// What each error was ("HTTP 503", "timeout", the innermost cause of a failed request).
    error_kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u32>>,
}

impl Minute {
    fn error(&self, kind: String) {
        *self
            .error_kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    fn record(&self, status: Result<u16, String>, latency: Duration) {
        let counter = match &status {
            Ok(200) => &self.ok,
            Ok(429) => &self.limited,
            Ok(other) => {
                self.error(format!("HTTP {other}"));
                &self.errors
            }
            Err(kind) => {
                self.error(kind.clone());
                &self.errors
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(us);
    }
}

/// What a failed request met: a timeout, a refused connection, or the innermost cause.
fn failure(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timeout".into();
    }
    if error.is_connect() {
        return "cannot connect".into();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string().chars().take(80).collect()
}

/// Resident memory of `pid` in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The server's consume requests so far, summed over labels, from its Prometheus text.
async fn consume_calls(client: &reqwest::Client, server: &str) -> Option<f64> {
    let text = client
        .get(format!("{server}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sum_of(&text, "lightrate_server_consume_requests_total")
}

/// The sum of every sample of the counter `name` (over all its labels) in Prometheus text;
/// `None` when there is none, or the text is not Prometheus text.
fn sum_of(text: &str, name: &str) -> Option<f64> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .fold(None, |total, v| Some(total.unwrap_or(0.0) + v))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

async fn soak(o: Options) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let url = format!("{}{}", o.app.trim_end_matches('/'), o.path);
    let slots = Arc::new(tokio::sync::Semaphore::new(o.concurrency));
    let total_per_second = o.new_per_second + o.hot_per_second;
    if total_per_second == 0 {
        return Err("nothing to send: both rates are 0".into());
    }
    let interval = Duration::from_secs_f64(1.0 / total_per_second as f64);
    println!(
        "minute  requests     200s     429s  errors  p50 ms  p99 ms  app MiB  server MiB  calls/request"
    );
    let mut new_user = 0u64;
    let mut calls_before = match &o.server {
        Some(server) => consume_calls(&client, server).await,
        None => None,
    };
    let started = Instant::now();
    let mut next = Instant::now();
    let mut rng = fastrand::Rng::new();
    for minute in 1..=o.minutes {
        let current = Arc::new(Minute::default());
        let end = started + Duration::from_secs(60 * minute);
        let mut sent = 0u64;
        while Instant::now() < end {
            next += interval;
            tokio::time::sleep_until(next.into()).await;
            let user = if rng.u64(0..total_per_second) < o.new_per_second {
                new_user += 1;
                format!("new-{new_user}")
            } else {
                format!("hot-{}", rng.u64(0..o.hot_users))
            };
            // At most `concurrency` in flight: past it, the generator waits (and reports the
            // shortfall in the request count rather than queueing without bound).
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let (client, url, current) = (client.clone(), url.clone(), current.clone());
            sent += 1;
            tokio::spawn(async move {
                let start = Instant::now();
                let status = match client.get(&url).header("x-user-id", user).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.bytes().await {
                            Ok(_) => Ok(status),
                            Err(e) => Err(failure(&e)),
                        }
                    }
                    Err(e) => Err(failure(&e)),
                };
                current.record(status, start.elapsed());
                drop(permit);
            });
        }
        // Let the minute's last requests finish.
        let _ = slots.acquire_many(o.concurrency as u32).await;
        let mut latencies = std::mem::take(
            &mut *current
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        latencies.sort_unstable();
        let calls_now = match &o.server {
            Some(server) => consume_calls(&client, server).await,
            None => None,
        };
        let per_request = match (calls_before, calls_now) {
            (Some(before), Some(now)) if sent > 0 => format!("{:.3}", (now - before) / sent as f64),
            _ => "n/a".into(),
        };
        calls_before = calls_now;
        let mib = |pid: Option<u32>| {
            pid.and_then(rss_mib)
                .map_or_else(|| "n/a".into(), |m| format!("{m:.1}"))
        };
        println!(
            "{minute:>6}  {sent:>8}  {:>7}  {:>7}  {:>6}  {:>6.2}  {:>6.2}  {:>7}  {:>10}  {per_request:>13}",
            current.ok.load(Ordering::Relaxed),
            current.limited.load(Ordering::Relaxed),
            current.errors.load(Ordering::Relaxed),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            mib(o.app_pid),
            mib(o.server_pid),
        );
        let kinds = current
            .error_kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            println!("        errors: {}", list.join("; "));
        }
    }
    Ok(())
}

/// One user's traffic (`lightrate-load user`).
#[derive(Debug, PartialEq, clap::Args)]
struct UserRun {
    /// The app's base URL, e.g. http://127.0.0.1:3000.
    #[arg(long, value_name = "URL")]
    app: String,
    /// The token server's base URL, for calls per request (its /metrics).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The route to request.
    #[arg(long, default_value = "/hello")]
    path: String,
    /// The HTTP method (any case).
    #[arg(long, default_value = "GET")]
    method: String,
    /// The user id (the x-user-id header).
    #[arg(long = "user", value_name = "ID", default_value = "paced")]
    user: String,
    /// Paced: how many requests.
    #[arg(long, value_name = "N", default_value_t = 40)]
    requests: u64,
    /// Paced: the pause after each answer, in milliseconds.
    #[arg(long = "interval-ms", value_name = "MS", default_value = "50", value_parser = millis)]
    interval: Duration,
    /// Concurrent: how many clients (at least 1); without it, paced.
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// Concurrent: for how many seconds (at least 1).
    #[arg(long, value_name = "S", default_value_t = 2)]
    seconds: u64,
    /// Also report the latencies of the requests sent in the first MS milliseconds (a cold
    /// start: each window on a line of its own; repeat for several windows).
    #[arg(long = "first-ms", value_name = "MS", value_parser = millis)]
    first: Vec<Duration>,
}

/// A whole number of milliseconds.
fn millis(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|_| "not a whole number of milliseconds".to_owned())
}

/// What the command line asks for, with the floors of its counts applied.
fn parse(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<Cli, clap::Error> {
    let mut cli = Cli::try_parse_from(args)?;
    match &mut cli {
        Cli::Soak(o) => {
            o.hot_users = o.hot_users.max(1);
            o.concurrency = o.concurrency.max(1);
        }
        Cli::User(o) => {
            o.method = o.method.to_ascii_uppercase();
            o.clients = o.clients.map(|n| n.max(1));
            o.seconds = o.seconds.max(1);
        }
    }
    Ok(cli)
}

/// Sends a copy of `request` and records its answer and latency.
async fn send(client: &reqwest::Client, request: &reqwest::Request, seen: &Minute) {
    let start = Instant::now();
    let status = match request.try_clone() {
        Some(request) => match client.execute(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) => Ok(status),
                    Err(e) => Err(failure(&e)),
                }
            }
            Err(e) => Err(failure(&e)),
        },
        None => Err("the request cannot be copied".into()),
    };
    seen.record(status, start.elapsed());
}

async fn user(o: UserRun) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let url = format!("{}{}", o.app.trim_end_matches('/'), o.path);
    let method = reqwest::Method::from_bytes(o.method.as_bytes())
        .map_err(|_| format!("{:?} is not a method", o.method))?;
    let seen = Arc::new(Minute::default());
    let calls_before = match &o.server {
        Some(server) => consume_calls(&client, server).await,
        None => None,
    };
    let request = Arc::new(
        client
            .request(method, &url)
            .header("x-user-id", o.user.as_str())
            .build()
            .map_err(|e| format!("cannot build the request: {e}"))?,
    );
    let started = Instant::now();
    // (When each request was sent, after the start; its latency), for the first windows.
    let sent_at = Arc::new(Mutex::new(Vec::<(Duration, Duration)>::new()));
    let longest_window = o.first.iter().max().copied().unwrap_or_default();
    if let Some(clients) = o.clients {
        let end = started + Duration::from_secs(o.seconds);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, seen, request) = (client.clone(), seen.clone(), request.clone());
            let sent_at = sent_at.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let at = Instant::now();
                    send(&client, &request, &seen).await;
                    if at - started < longest_window {
                        sent_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((at - started, at.elapsed()));
                    }
                }
            }));
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
    } else {
        for i in 0..o.requests {
            if i > 0 {
                tokio::time::sleep(o.interval).await;
            }
            send(&client, &request, &seen).await;
        }
    }
    let elapsed = started.elapsed();
    let mut latencies =
        std::mem::take(&mut *seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_unstable();
    let sent = latencies.len() as u64;
    let calls = match (&o.server, calls_before) {
        (Some(server), Some(before)) => {
            consume_calls(&client, server).await.map(|now| now - before)
        }
        _ => None,
    };
    let calls = calls.map_or_else(
        || "calls n/a".into(),
        |c| {
            format!(
                "{c} source calls ({:.3} per request)",
                c / sent.max(1) as f64
            )
        },
    );
    println!(
        "{sent} requests: {} 200, {} 429, {} other; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; \
         {:.0} requests/s; {calls}",
        seen.ok.load(Ordering::Relaxed),
        seen.limited.load(Ordering::Relaxed),
        seen.errors.load(Ordering::Relaxed),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        sent as f64 / elapsed.as_secs_f64(),
    );
    let sent_at = std::mem::take(&mut *sent_at.lock().unwrap_or_else(|p| p.into_inner()));
    for window in &o.first {
        let mut first: Vec<u32> = sent_at
            .iter()
            .filter(|(at, _)| at < window)
            .map(|(_, latency)| u32::try_from(latency.as_micros()).unwrap_or(u32::MAX))
            .collect();
        first.sort_unstable();
        println!(
            "first {} ms: {} requests; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            window.as_millis(),
            first.len(),
            percentile(&first, 0.5),
            percentile(&first, 0.9),
            percentile(&first, 0.99),
            percentile(&first, 1.0),
        );
    }
    let kinds = seen.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
    if !kinds.is_empty() {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        println!("errors: {}", list.join("; "));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Help, --version and usage errors end here (clap's exit codes: 0, and 2 for an error).
    let ran = match parse(std::env::args_os()).unwrap_or_else(|e| e.exit()) {
        Cli::Soak(options) => soak(options).await,
        Cli::User(run) => user(run).await,
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lightrate-load: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Cli, String> {
        parse(std::iter::once("lightrate-load").chain(s.split_whitespace()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn options_parse_and_bad_ones_say_why() {
        let Ok(Cli::Soak(o)) = args("soak --app http://a --minutes 2 --hot-users 0") else {
            panic!("not a soak")
        };
        assert_eq!((o.app.as_str(), o.minutes, o.hot_users), ("http://a", 2, 1));
        assert_eq!(
            (o.path.as_str(), o.new_per_second, o.concurrency),
            ("/hello", 200, 64)
        );
        assert!(args("soak").unwrap_err().contains("--app"));
        let e = args("soak --app x --minutes ten").unwrap_err();
        assert!(e.contains("--minutes") && e.contains("ten"), "{e}");
        assert!(args("flood").unwrap_err().contains("flood"));
        assert!(args("").is_err());
        let help = parse(["lightrate-load", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let version = parse(["lightrate-load", "--version"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn a_user_run_is_paced_unless_clients_are_given() {
        let Ok(Cli::User(paced)) = args("user --app http://a --method post") else {
            panic!("not a user run")
        };
        assert_eq!(
            paced,
            UserRun {
                app: "http://a".into(),
                server: None,
                path: "/hello".into(),
                method: "POST".into(),
                user: "paced".into(),
                requests: 40,
                interval: Duration::from_millis(50),
                clients: None,
                seconds: 2,
                first: Vec::new(),
            }
        );
        let Ok(Cli::User(concurrent)) =
            args("user --app http://a --clients 32 --seconds 0 --interval-ms 5")
        else {
            panic!("not a user run")
        };
        assert_eq!((concurrent.clients, concurrent.seconds), (Some(32), 1));
        let Ok(Cli::User(one)) = args("user --app http://a --clients 0") else {
            panic!("not a user run")
        };
        assert_eq!(one.clients, Some(1));
        assert_eq!(concurrent.interval, Duration::from_millis(5));
        let Ok(Cli::User(cold)) =
            args("user --app http://a --clients 32 --first-ms 1000 --first-ms 4000")
        else {
            panic!("not a user run")
        };
        let windows = [Duration::from_secs(1), Duration::from_secs(4)];
        assert_eq!(cold.first, windows);
        assert!(args("user --app http://a --first-ms soon").is_err());
        assert!(args("user --app x --interval-ms soon")
            .unwrap_err()
            .contains("--interval-ms"));
    }

    #[test]
    fn the_command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&samples, 0.5), 51.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_servers_calls_are_summed_over_labels() {
        let text = "# TYPE lightrate_server_consume_requests_total counter\n\
                    lightrate_server_consume_requests_total{status=\"200\",rule=\"a\"} 3\n\
                    lightrate_server_consume_requests_total{status=\"401\"} 2\n\
                    lightrate_server_consume_requests_total_other 100\n";
        assert_eq!(
            sum_of(text, "lightrate_server_consume_requests_total"),
            Some(5.0)
        );
        assert_eq!(sum_of(text, "absent"), None);
    }

    #[test]
    fn resident_memory_comes_from_proc() {
        let rss = rss_mib(std::process::id());
        assert!(rss.is_some_and(|m| m > 0.0));
        assert_eq!(rss_mib(u32::MAX), None);
    }
}
