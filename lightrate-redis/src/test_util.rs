//! Real Redis servers and clusters for tests (feature `test-util`): started on free ports of
//! 127.0.0.1, in a scratch directory, stopped and cleaned up when dropped.
//!
//! When `redis-server` is not on `PATH`, [`RedisServer::start`] and [`RedisCluster::start`]
//! print one line saying which package to install and return `None`, so the test can return
//! early; when the `CI` variable is set, they panic instead: CI must run every Redis test.
//!
//! ```no_run
//! use lightrate_redis::test_util::RedisServer;
//!
//! let Some(redis) = RedisServer::start() else { return };
//! let url = redis.url(); // redis://127.0.0.1:<port>
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Whether `redis-server` can run here. Prints the skip line (or panics under `CI`) when not.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = "redis-server is not on PATH: install the `redis-server` package \
                       (apt-get install redis-server) to run the Redis tests";
        if std::env::var_os("CI").is_some() {
            panic!("{message} (CI is set, so a missing Redis is a failure)");
        }
        // Straight to stderr, past the test harness's capture, so the skip is seen.
        let test = std::thread::current()
            .name()
            .unwrap_or("a Redis test")
            .to_owned();
        let _ = writeln!(io::stderr(), "skipped {test}: {message}");
    }
    found
}

/// A `redis-server` process of this test; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    cluster: bool,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port, and waits until it answers `PING`. `None` (after the
    /// skip line) when `redis-server` is missing and `CI` is unset.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with_args(&[])
    }

    /// [`start`](Self::start), with more `redis-server` arguments (`["--requirepass", "pw"]`).
    pub fn start_with_args(args: &[&str]) -> Option<RedisServer> {
        redis_available().then(|| RedisServer::start_node(false, args))
    }

    fn start_node(cluster: bool, args: &[&str]) -> RedisServer {
        let mut last_error = None;
        for _ in 0..10 {
            let port = free_port(cluster);
            let mut server = RedisServer {
                child: None,
                port,
                dir: scratch_dir(port),
                cluster,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("cannot start redis-server: {last_error:?}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the server, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server's process (`SIGSTOP`): it keeps its connections but answers nothing,
    /// as a stalled or frozen machine, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .unwrap_or_else(|e| panic!("cannot run kill {signal}: {e}"));
            assert!(status.success(), "kill {signal} {pid} failed: {status}");
        }
    }

    /// Whether the server is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (`SIGKILL`: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: it keeps nothing on disk) and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may take a moment to be free again.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot restart redis-server on port {}: {e}", self.port),
            }
        }
    }

    /// Sends one command and returns the raw reply (RESP text), for checks a test makes
    /// without a client library.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        command(self.port, args)
    }

    fn spawn(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut server = Command::new("redis-server");
        server
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
            server.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let mut child = server.spawn()?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(reply) = command(self.port, &["PING"]) {
                // NOAUTH: up, with a password.
                if (reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
                    && is_ours(self.port, &mut child)?
                {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("redis-server did not answer PING in time"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of this test: primaries (`redis-server --cluster-enabled yes`, joined by
/// `redis-cli --cluster create`), with or without replicas; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) nodes, creates the cluster, and waits until every node says
    /// `cluster_state:ok`. `None` (after the skip line) when `redis-server` is missing and `CI`
    /// is unset.
    pub fn start(n: usize) -> Option<RedisCluster> {
        RedisCluster::create(n.max(3), 0, &[])
    }

    /// Starts `primaries` (at least 3) primaries with `replicas` replicas each, ready for
    /// failovers: `cluster-node-timeout` 1000 ms (a dead primary's replica takes over within
    /// about 2 s) and `cluster-require-full-coverage no` (while one node's slots have no
    /// primary, the other nodes keep serving theirs; with `yes`, Redis refuses every key of the
    /// cluster then). Waits until every node says `cluster_state:ok` and knows every replica.
    pub fn start_with_replicas(primaries: usize, replicas: usize) -> Option<RedisCluster> {
        let cluster = RedisCluster::create(
            primaries.max(3),
            replicas,
            &[
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
            ],
        )?;
        let expected = primaries.max(3) * (1 + replicas);
        let deadline = Instant::now() + START_DEADLINE;
        // Every node knows every replica, and every replica is in sync with its primary (a
        // replica that never synced would not take over).
        while !cluster.nodes.iter().all(|node| {
            node.command(&["CLUSTER", "NODES"]).is_ok_and(|nodes| {
                nodes.lines().filter(|l| l.contains("slave")).count() == expected - primaries.max(3)
            }) && node.command(&["INFO", "replication"]).is_ok_and(|info| {
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        }) {
            assert!(
                Instant::now() < deadline,
                "the replicas did not join in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(cluster)
    }

    fn create(primaries: usize, replicas: usize, args: &[&str]) -> Option<RedisCluster> {
        if !redis_available() {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| RedisServer::start_node(true, args))
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (package redis-tools): {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        assert!(
            cluster.wait_until(START_DEADLINE, RedisCluster::is_ok),
            "the cluster did not become ok in time"
        );
        Some(cluster)
    }

    /// Whether every running node says `cluster_state:ok` (a paused node is asked too, and
    /// does not answer: pause no node while polling this).
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|node| {
            node.command(&["CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    }

    /// Primary `node`'s replication offset and its first replica's, from the primary's
    /// `INFO replication`; `None` while either is unknown.
    pub fn replication_offsets(&self, node: usize) -> Option<(u64, u64)> {
        let info = self
            .nodes
            .get(node)?
            .command(&["INFO", "replication"])
            .ok()?;
        let primary = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))?
            .trim()
            .parse()
            .ok()?;
        let replica = info
            .lines()
            .find(|l| l.starts_with("slave0:"))?
            .split(',')
            .find_map(|f| f.strip_prefix("offset="))?
            .trim()
            .parse()
            .ok()?;
        Some((primary, replica))
    }

    /// Waits (up to `deadline`) until primary `node`'s first replica has everything the
    /// primary had written when this was called; traffic written after that does not hold it
    /// up. `false` if the deadline passed first.
    pub fn wait_replicated(&self, node: usize, deadline: Duration) -> bool {
        let written = std::cell::Cell::new(None);
        self.wait_until(deadline, |c| {
            let Some((primary, replica)) = c.replication_offsets(node) else {
                return false;
            };
            let mark = written.get().unwrap_or(primary);
            written.set(Some(mark));
            replica >= mark
        })
    }

    /// Polls `condition` every 10 ms until it holds (`true`) or `deadline` has passed
    /// (`false`).
    pub fn wait_until(&self, deadline: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn key_slot(&self, key: &str) -> u16 {
        let reply = self
            .running()
            .find_map(|node| node.command(&["CLUSTER", "KEYSLOT", key]).ok())
            .expect("no running node answers");
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT answered {reply:?}"))
    }

    /// The index (in [`nodes`](Self::nodes)) of the primary serving `slot`, as the running
    /// node `asked` sees it (`CLUSTER NODES`); `None` when it knows no running primary for it.
    pub fn primary_of(&self, slot: u16, asked: usize) -> Option<usize> {
        let listing = self.nodes[asked].command(&["CLUSTER", "NODES"]).ok()?;
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if !serves {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())?;
            return self.nodes.iter().position(|n| n.port() == port);
        }
        None
    }

    /// The nodes that are running (not killed).
    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Kills node `index` (`SIGKILL`).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// The URL of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// Whether the server answering on `port` is `child` (and not another test's server that
/// took the port first, in which case `child` has exited or will).
fn is_ours(port: u16, child: &mut Child) -> io::Result<bool> {
    let pid = format!("process_id:{}\r\n", child.id());
    match command(port, &["INFO", "server"]) {
        Ok(info) if info.starts_with('$') => Ok(info.contains(&pid)),
        // Behind a password: it is ours if it is still running.
        _ => Ok(child.try_wait()?.is_none()),
    }
}

/// A port of 127.0.0.1 that was free a moment ago (and, for a cluster node, whose bus port,
/// 10000 higher, was free too).
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"));
        if !cluster {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn scratch_dir(port: u16) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "lightrate-redis-test-{}-{port}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Sends `args` as one RESP command to 127.0.0.1:`port`; returns the reply's text.
fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while !is_complete(&reply) {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buffer[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether `reply` holds one whole RESP reply (simple, error, integer or bulk string; arrays
/// are read as far as their first line).
fn is_complete(reply: &[u8]) -> bool {
    let Some(line_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    let length: i64 = std::str::from_utf8(&reply[1..line_end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    length < 0 || reply.len() >= line_end + 2 + length as usize + 2
}
