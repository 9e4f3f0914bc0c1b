//! The benches' heap counter: the global allocator counts the bytes it hands out, so a bench
//! can report what a structure holds (`heap()` before and after building it).

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts heap allocations.
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes in use now.
pub fn heap() -> usize {
    let s = ALLOC.stats();
    let net = s.bytes_allocated as i128 + s.bytes_reallocated as i128 - s.bytes_deallocated as i128;
    usize::try_from(net).unwrap_or(0)
}
