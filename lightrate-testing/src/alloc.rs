//! [`Counting`]: the system allocator, counting.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the allocations of each thread (other threads, such as the
/// test harness's, do not count against the code under test) and the live bytes of the
/// process. Install it in a test or bench binary:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: lightrate_testing::Counting = lightrate_testing::Counting;
///
/// let before = lightrate_testing::allocations();
/// let boxed = Box::new(1u64);
/// assert_eq!(lightrate_testing::allocations() - before, 1);
/// # drop(boxed);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static THREAD_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations (and reallocations) made by this thread so far.
pub fn allocations() -> usize {
    THREAD_ALLOCATIONS.with(Cell::get)
}

/// Bytes allocated and not yet freed, by every thread.
pub fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

fn count_allocation() {
    let _ = THREAD_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are a
// thread-local cell and an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(size(layout.size()), Ordering::Relaxed);
        count_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(size(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(size(new_size) - size(layout.size()), Ordering::Relaxed);
        count_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
