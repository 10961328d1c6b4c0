//! [`Logs`]: what lightrate logs on this thread, captured for a test.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, Once};

thread_local! {
    static CURRENT: RefCell<Option<Arc<Mutex<String>>>> = const { RefCell::new(None) };
}

/// Captures every `lightrate` event (debug and up) logged on this thread while it lives
/// (a `#[tokio::test]` or `#[actix_rt::test]` runs its requests on the test's thread).
///
/// The subscriber is the global one (installed by the first capture of the test binary), so
/// that no other test's thread can make tracing cache a callsite as disabled; it writes each
/// event to the capture of the thread that logged it, if any.
#[derive(Debug)]
pub struct Logs {
    buffer: Arc<Mutex<String>>,
}

struct Writer;

impl io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        CURRENT.with(|current| {
            if let Some(buffer) = &*current.borrow() {
                let mut buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
                buffer.push_str(&String::from_utf8_lossy(bytes));
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing this thread's events.
    pub fn capture() -> Logs {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Writer)
                .with_ansi(false)
                .with_env_filter(tracing_subscriber::EnvFilter::new("lightrate=debug"))
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let buffer = Arc::new(Mutex::new(String::new()));
        CURRENT.with(|current| *current.borrow_mut() = Some(buffer.clone()));
        Logs { buffer }
    }

    /// The lines captured so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|current| current.borrow_mut().take());
    }
}
