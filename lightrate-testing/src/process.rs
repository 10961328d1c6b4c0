//! Processes that tests start: the demo apps and the server, which print
//! `listening on <url>` as their first line on stdout.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A process a test started and that said where it listens; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Listening {
    child: Child,
    base_url: String,
}

impl Listening {
    /// Spawns `command` with its stdout piped and reads its first line, which must be
    /// `listening on <url>` (the test fails with what it printed instead).
    pub fn spawn(command: &mut Command) -> Listening {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let Some(base_url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} printed {line:?} instead of its address");
        };
        Listening {
            base_url: base_url.to_owned(),
            child,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The process id, to signal it.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process, to take its stderr or wait for its exit.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example `name`, which `cargo test` builds next to the test binaries
/// (`target/<profile>/examples/`).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole test command (`cargo test`), which builds the examples",
        path.display()
    );
    path
}

/// A command for the demo app `name` on a free port (`PORT=0`), logging warnings only, with
/// no `LIGHTRATE_*` variable of the test's environment.
pub fn demo_app(name: &str) -> Command {
    let mut command = Command::new(example_binary(name));
    command.env("PORT", "0").env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("LIGHTRATE_") {
            command.env_remove(key);
        }
    }
    command
}
