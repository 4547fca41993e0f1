//! Shared by the mutation tests of the file readers (included with `#[path]` by the test
//! targets of spade-io, spade-metrics and spade-data): a counting global allocator that
//! measures the peak heap of one load, random byte mutations, and the property runner.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged
// and only updates counters; the GlobalAlloc contract is the system allocator's.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// [`GlobalAlloc::alloc`]'s contract, which the system allocator's call below relies on.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (layout has non-zero size per the caller's contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    /// # Safety
    /// [`GlobalAlloc::dealloc`]'s contract, which the system allocator's call below relies on.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by this allocator (so by System) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    /// # Safety
    /// [`GlobalAlloc::realloc`]'s contract, which the system allocator's call below relies on.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr/layout come from this allocator; new_size is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests of this binary run one at a time, so that the peak is one load's.
static SERIAL: Mutex<()> = Mutex::new(());

/// Cases per format: a few hundred, seconds each in CI.
pub const CASES: u32 = 300;

/// Runs `load` and returns its result and the heap bytes it allocated at its peak.
pub fn peak_of<T>(load: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = load();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Holds the lock that runs the tests of one binary one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    /// Overwrites 8 bytes with an extreme little-endian value.
    Word {
        at: usize,
        value: u64,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 40),
        Just(i64::MAX as u64),
        any::<u64>()
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), extreme).prop_map(|(at, value)| Mutation::Word { at, value }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

pub fn apply(bytes: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } => b[at % n] ^= 1 << bit,
            Mutation::Set { at, byte } => b[at % n] = *byte,
            Mutation::Word { at, value } => {
                let at = at % n;
                let v = value.to_le_bytes();
                let k = (n - at).min(8);
                b[at..at + k].copy_from_slice(&v[..k]);
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let at = at % n;
                b.drain(at..(at + len).min(n));
            }
        }
    }
    b
}

/// Runs the mutation property over `valid` bytes written as `name`: `load` must give `Ok` or
/// an error message starting with the file's path, within the memory bound.
pub fn check_mutations(name: &str, valid: &[u8], cases: u32, load: impl Fn(&Path) -> Result<(), String>) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    // The sound file loads.
    std::fs::write(&path, valid).unwrap();
    let (ok, _) = peak_of(|| load(&path));
    assert!(ok.is_ok(), "{ok:?}");
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let errors = std::cell::Cell::new(0usize);
    runner
        .run(&proptest::collection::vec(mutation(), 1..6), |muts| {
            let bytes = apply(valid, &muts);
            std::fs::write(&path, &bytes).unwrap();
            let (r, peak) = peak_of(|| load(&path));
            // A small multiple of the file, plus a constant for the reader's buffers.
            let bound = 64 * bytes.len() + (8 << 20);
            prop_assert!(peak <= bound, "{muts:?}: peak {peak} bytes > bound {bound}");
            if let Err(e) = r {
                errors.set(errors.get() + 1);
                prop_assert!(e.starts_with(&path.display().to_string()), "{muts:?}: {e}");
            }
            Ok(())
        })
        .unwrap();
    // The mutations do reach the parsers' error paths.
    assert!(errors.get() > 0, "no mutation of {name} was refused");
}
