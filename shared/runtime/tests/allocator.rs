//! The process's allocator gives freed memory back to the system: after a burst of small
//! allocations is freed (a few of them kept, as a server keeps some state from every burst),
//! resident memory falls back near where it was. glibc's allocator keeps such memory for
//! good; this test fails with it.

use std::time::{Duration, Instant};

// The global allocator is installed by the `runtime` crate: linking it is enough.
use runtime as _;

/// Resident memory of this process, in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[test]
fn memory_freed_after_a_burst_is_given_back() {
    const MIB: usize = 1024 * 1024;
    // Run on a thread of its own, as a server's workers do.
    std::thread::spawn(|| {
        let before = resident();
        // 128 MiB in 1 KiB blocks, every byte written so each page is resident.
        let mut blocks: Vec<Vec<u8>> = (0..128 * 1024).map(|i| vec![i as u8; 1024]).collect();
        let peak = resident();
        assert!(
            peak >= before + 100 * MIB,
            "the burst is resident: {peak} vs {before}"
        );
        // Keep one block in 1,024 (one per MiB), free the rest.
        let kept: Vec<Vec<u8>> = blocks
            .iter_mut()
            .step_by(1024)
            .map(std::mem::take)
            .collect();
        drop(blocks);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Some allocator activity, as an idle server still has (timers, probes).
            let churn: Vec<Vec<u8>> = (0..256).map(|i| vec![0u8; 64 + 16 * i]).collect();
            drop(std::hint::black_box(churn));
            let now = resident();
            if now < before + 24 * MIB {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "freed memory stayed resident: {} MiB before, {} MiB at the peak, {} MiB after",
                before / MIB,
                peak / MIB,
                now / MIB
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kept.len(), 128);
    })
    .join()
    .expect("the burst thread");
}
