//! Locks that recover from poisoning. Every lock in the engine guards plain data that a holder
//! which panicked cannot leave inconsistent (a counter, a map of plain values, a pointer swapped
//! in one store), so a poisoned lock is used as it is rather than turned into a second panic.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `l` for reading.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `l` for writing.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The atomics and the lock of the local bucket: std's, or loom's in the tests built with
/// `--cfg lightrate_loom`, where the model checker runs the bucket's lock-free paths over
/// every interleaving. Only the bucket switches; every other lock of the engine stays std's.
/// (Not `--cfg loom`: tokio, a dependency, reads that one and drops its `net` module.)
pub(crate) mod checked {
    #[cfg(not(all(test, lightrate_loom)))]
    pub(crate) use super::lock;
    #[cfg(not(all(test, lightrate_loom)))]
    pub(crate) use std::sync::{Mutex, MutexGuard};

    #[cfg(all(test, lightrate_loom))]
    pub(crate) use loom::sync::{Mutex, MutexGuard};

    /// Locks `m` (loom's locks never poison).
    #[cfg(all(test, lightrate_loom))]
    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `AtomicU32`, `AtomicU64` and `Ordering`.
    pub(crate) mod atomic {
        #[cfg(not(all(test, lightrate_loom)))]
        pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

        #[cfg(all(test, lightrate_loom))]
        pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    }
}
