//! What the end-to-end tests share: the token server, the running app, an HTTP client.

use std::time::Duration;

use lightrate::server::{LightRateServer, RunningServer, ServerConfig};
use lightrate::{EmbeddedSource, LightRateClient, Limiter, ManualClock, OnUnavailable, RuleSet};
use lightrate_server::faults::Faults;

pub const API_KEY: &str = "sk_test_e2e_0123456789";
pub const APP_ID: &str = "app_e2e";

/// A demo app serving on 127.0.0.1; stopped when dropped.
pub struct RunningApp {
    pub base_url: String,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl RunningApp {
    pub fn new(base_url: String, stop: impl FnOnce() + Send + 'static) -> Self {
        RunningApp {
            base_url,
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// The LightRate-compatible server with the demo rules on a manual clock, with fault
/// injection and request recording.
pub struct TokenServer {
    pub server: RunningServer,
    pub faults: Faults,
    pub clock: ManualClock,
}

impl TokenServer {
    pub async fn start() -> TokenServer {
        TokenServer::with_rules(RuleSet::demo()).await
    }

    /// The server with these rules.
    pub async fn with_rules(rules: RuleSet) -> TokenServer {
        let clock = ManualClock::new();
        let faults = Faults::new();
        let source = EmbeddedSource::new(rules).with_clock(clock.clone());
        let config = ServerConfig::new(API_KEY, APP_ID, source).unwrap();
        let server = LightRateServer::new(config)
            .with_faults(faults.clone())
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        TokenServer {
            server,
            faults,
            clock,
        }
    }

    /// A limiter of the demo apps' kind, taking its tokens from this server, on this
    /// server's clock (so that advancing it moves both).
    pub fn limiter(&self, options: LimiterOptions) -> Limiter {
        self.limiter_at(&self.server.base_url(), options)
    }

    /// The same, with the client pointed at `base_url` (a server that is down, say).
    pub fn limiter_at(&self, base_url: &str, options: LimiterOptions) -> Limiter {
        let client = LightRateClient::builder(options.api_key.unwrap_or(API_KEY), APP_ID)
            .base_url(base_url)
            .timeout(options.timeout)
            .build()
            .unwrap();
        Limiter::builder(client)
            .clock(self.clock.clone())
            .lease_size(options.lease_size)
            .refill_ahead(options.refill_ahead)
            .on_unavailable(options.on_unavailable)
            .build()
    }

    /// How many consume calls reached the server.
    pub fn calls(&self) -> usize {
        self.faults.count()
    }
}

/// A real `lightrate-server` with `rules` on the real clock, answering through `fault`
/// (a delay, say: a distant source), and a limiter as the demo apps build it from the
/// environment (the library's defaults) over a client of it.
pub async fn distant_source(
    rules: RuleSet,
    fault: lightrate_server::faults::Fault,
) -> (RunningServer, Faults, Limiter) {
    let faults = Faults::new();
    faults.set_always(Some(fault));
    let config = ServerConfig::new(API_KEY, APP_ID, EmbeddedSource::new(rules)).unwrap();
    let server = LightRateServer::new(config)
        .with_faults(faults.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let client = LightRateClient::builder(API_KEY, APP_ID)
        .base_url(server.base_url())
        .build()
        .unwrap();
    (server, faults, Limiter::new(client))
}

/// How a test's limiter differs from the default.
#[derive(Clone, Debug)]
pub struct LimiterOptions {
    pub lease_size: u64,
    pub refill_ahead: bool,
    pub on_unavailable: OnUnavailable,
    pub timeout: Duration,
    pub api_key: Option<&'static str>,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            lease_size: lightrate_core::DEFAULT_LEASE_SIZE,
            refill_ahead: false,
            on_unavailable: OnUnavailable::Allow,
            timeout: Duration::from_secs(5),
            api_key: None,
        }
    }
}

/// The web framework under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    Axum,
    Actix,
}

impl Framework {
    pub fn start(self, limiter: Limiter) -> RunningApp {
        match self {
            Framework::Axum => crate::axum::start(limiter),
            Framework::Actix => crate::actix::start(limiter),
        }
    }

    /// The demo app in `mode` (`Mode` is the same type for both adapters).
    pub fn start_in(self, limiter: Limiter, mode: lightrate::tower::Mode) -> RunningApp {
        match self {
            Framework::Axum => crate::axum::start_in(limiter, mode),
            Framework::Actix => crate::actix::start_in(limiter, mode),
        }
    }
}

/// A real HTTP client (a fresh connection pool per test).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Everything lightrate logs, captured for the whole test binary.
pub mod logs {
    use std::io;
    use std::sync::{Mutex, Once};

    static BUFFER: Mutex<String> = Mutex::new(String::new());
    static INIT: Once = Once::new();

    struct Capture;

    impl io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut buffer = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
            buffer.push_str(&String::from_utf8_lossy(bytes));
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Installs the capturing subscriber (once per test binary).
    pub fn init() {
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Capture)
                .with_ansi(false)
                .with_env_filter(tracing_subscriber::EnvFilter::new("lightrate=debug"))
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
    }

    /// How many times `needle` appears in the logs so far.
    pub fn count(needle: &str) -> usize {
        init();
        BUFFER
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .matches(needle)
            .count()
    }

    /// Whether `needle` appears anywhere in the logs.
    pub fn contains(needle: &str) -> bool {
        count(needle) > 0
    }
}
