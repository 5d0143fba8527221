//! Memory the process's C code freed, handed back to the system.
//!
//! Rust code allocates with jemalloc, whose background thread returns what is no longer
//! used. SQLite, linked in, allocates with the C library's `malloc` (each connection's page
//! cache and prepared statements among it), and glibc keeps what is freed in its arenas:
//! it gives memory back on its own only from the top of a heap, so after a burst of load,
//! once the pools have closed the connections it opened, tens of MiB stay resident, free
//! but held (about 26 MiB on SQLite after the bench's journey). `malloc_trim` returns the
//! free pages inside every arena as well.
//!
//! So every [`CHECK_EVERY`] the host reads how much the C library holds free, and when
//! that has grown by [`TRIM_ABOVE`] since the last trim (or since its lowest since then),
//! trims. A process that does not use the C library's allocator much (on PostgreSQL) never
//! reaches the threshold; one under steady load reuses what it freed and trims rarely.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the C library's free memory is read.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Free memory held by the C library's allocator that is handed back: below this, a trim
/// is not worth its pass over the arenas.
pub(crate) const TRIM_ABOVE: usize = 4 << 20;

/// What one trim found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Bytes the C library's arenas held free before the trim.
    pub(crate) free_before: usize,
    /// Whether the C library returned any memory to the system.
    pub(crate) returned: bool,
}

/// Decides when to trim: when free memory grew by the threshold since the last trim, or
/// since its lowest point after it (freed memory that is reused again is not counted
/// twice).
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    baseline: usize,
}

impl Trimmer {
    /// Reads the C library's free memory and trims if it grew by `threshold`.
    pub(crate) fn check(&mut self, threshold: usize) -> Option<Trimmed> {
        let free = free_bytes()?;
        if free >= self.baseline.saturating_add(threshold) {
            let returned = trim();
            // What stays free after a trim (its pages already returned) is the new floor.
            self.baseline = free_bytes().unwrap_or(free);
            Some(Trimmed {
                free_before: free,
                returned,
            })
        } else {
            self.baseline = self.baseline.min(free);
            None
        }
    }
}

/// Trims the C library's arenas whenever their free memory has grown, until cancelled.
pub(crate) async fn keep_trimmed(cancel: CancellationToken) {
    if free_bytes().is_none() {
        return;
    }
    let mut trimmer = Trimmer::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        // A trim walks every arena under its lock: off the runtime's threads.
        let checked = tokio::task::spawn_blocking(move || {
            let trimmed = trimmer.check(TRIM_ABOVE);
            (trimmer, trimmed)
        })
        .await;
        match checked {
            Ok((kept, trimmed)) => {
                trimmer = kept;
                if let Some(t) = trimmed {
                    tracing::debug!(
                        free_before = t.free_before,
                        returned = t.returned,
                        "trimmed the C library's heap"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "trimming the C library's heap failed");
                return;
            }
        }
    }
}

/// Bytes the C library's allocator holds free in all its arenas (`None` where it cannot
/// say: not glibc).
pub(crate) fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[expect(unsafe_code, reason = "glibc's mallinfo2 has no safe binding")]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's state under
        // its locks (glibc 2.33 and later).
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns the free pages of every arena of the C library's allocator to the system;
/// whether any was returned.
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[expect(unsafe_code, reason = "glibc's malloc_trim has no safe binding")]
    {
        // SAFETY: malloc_trim only releases memory no allocation uses, under the arenas'
        // locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "the test frees memory through the C library's malloc, as SQLite does"
)]
mod tests {
    use super::*;

    /// Resident memory of this process, bytes.
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    /// Allocates `total` bytes through the C library in blocks too small for it to map
    /// on their own, on a thread of its own (an arena of its own, as SQLite's worker
    /// threads get), frees all but the last block, and returns that one to free later.
    fn held_after_free(total: usize) -> usize {
        std::thread::spawn(move || {
            const BLOCK: usize = 4096;
            let blocks: Vec<usize> = (0..total / BLOCK)
                .map(|_| {
                    // SAFETY: a plain allocation, written so its pages are resident, and
                    // freed below (all but the last, which pins the heap's top).
                    unsafe {
                        let p = libc::malloc(BLOCK) as *mut u8;
                        assert!(!p.is_null());
                        std::ptr::write_bytes(p, 1, BLOCK);
                        p as usize
                    }
                })
                .collect();
            let (last, rest) = blocks.split_last().expect("blocks");
            for &p in rest {
                // SAFETY: allocated above, freed once.
                unsafe { libc::free(p as *mut libc::c_void) };
            }
            *last
        })
        .join()
        .expect("the allocating thread")
    }

    #[test]
    fn memory_freed_inside_the_c_heap_is_returned_once_it_grew_past_the_threshold() {
        let mut trimmer = Trimmer::default();
        // Whatever the process held free before this test is trimmed first.
        trimmer.check(0);
        assert_eq!(trimmer.check(64 << 20), None, "nothing grew yet");

        let pinned = held_after_free(96 << 20);
        let before = resident();
        let trimmed = trimmer
            .check(32 << 20)
            .expect("96 MiB freed is past a 32 MiB threshold");
        let after = resident();
        assert!(trimmed.free_before >= 90 << 20, "{trimmed:?}");
        assert!(trimmed.returned, "{trimmed:?}");
        assert!(
            before.saturating_sub(after) >= 64 << 20,
            "resident {} MiB before the trim, {} MiB after",
            before >> 20,
            after >> 20
        );
        assert_eq!(
            trimmer.check(32 << 20),
            None,
            "what was trimmed is not trimmed again"
        );
        // SAFETY: the block held_after_free kept, freed once.
        unsafe { libc::free(pinned as *mut libc::c_void) };
    }
}
