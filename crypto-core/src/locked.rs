//! Heap cells whose pages stay locked in RAM (`mlock`) while they live, so
//! a key or its AES schedule is never written to swap, without the whole
//! process needing a high `RLIMIT_MEMLOCK`.
//!
//! Neighbouring cells share pages and `munlock` does not count, so each page
//! is locked once, counted per cell, and unlocked when its last cell goes.
//! Locking is best effort: a refused `mlock` (limit reached) leaves the cell
//! usable and is counted in [`memory_lock_report`] for the caller to report.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Locked pages by start address: how many cells use each, and its guard.
static PAGES: Mutex<BTreeMap<usize, (usize, region::LockGuard)>> = Mutex::new(BTreeMap::new());
/// Pages that `mlock` refused.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// How many pages holding secrets are locked now, and how many locks the
/// system refused so far (raise `RLIMIT_MEMLOCK` if that is not zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLockReport {
    /// Pages locked now.
    pub locked_pages: usize,
    /// Page locks refused since the process started.
    pub refused: u64,
}

/// The state of the secret-page locks of this process.
pub fn memory_lock_report() -> MemoryLockReport {
    MemoryLockReport {
        locked_pages: pages().len(),
        refused: REFUSED.load(Ordering::Relaxed),
    }
}

fn pages() -> std::sync::MutexGuard<'static, BTreeMap<usize, (usize, region::LockGuard)>> {
    // The map holds no invariant a panicking holder could break halfway.
    PAGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The start addresses of the pages `[start, start + len)` touches.
fn page_starts(start: usize, len: usize) -> impl Iterator<Item = usize> {
    let page = region::page::size();
    let first = start - start % page;
    let end = start + len.max(1);
    (first..end).step_by(page)
}

/// A boxed `T` on locked pages. The value is dropped (secret types zeroize
/// themselves) before its pages are released.
pub(crate) struct Locked<T> {
    value: Option<Box<T>>,
}

impl<T> Locked<T> {
    pub(crate) fn new(value: T) -> Self {
        let value = Box::new(value);
        let (start, len) = span::<T>(&value);
        let mut map = pages();
        for page in page_starts(start, len) {
            if let Some((users, _)) = map.get_mut(&page) {
                *users += 1;
                continue;
            }
            match region::lock(page as *const u8, 1) {
                Ok(guard) => {
                    map.insert(page, (1, guard));
                }
                Err(_) => {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Self { value: Some(value) }
    }
}

fn span<T>(value: &T) -> (usize, usize) {
    (std::ptr::from_ref(value) as usize, std::mem::size_of::<T>())
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        let Some(value) = self.value.take() else {
            return;
        };
        let (start, len) = span::<T>(&value);
        drop(value);
        let mut map = pages();
        for page in page_starts(start, len) {
            if let Some((users, _)) = map.get_mut(&page) {
                *users -= 1;
                if *users == 0 {
                    map.remove(&page);
                }
            }
        }
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value.as_deref().expect("a live cell holds its value")
    }
}

impl<T> DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_deref_mut()
            .expect("a live cell holds its value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stays_locked_until_its_last_cell_goes() {
        let before = memory_lock_report();
        let a = Locked::new([1u8; 32]);
        let b = Locked::new([2u8; 32]);
        let during = memory_lock_report();
        if during.refused > before.refused {
            println!("skipping: this process may not lock memory");
            return;
        }
        assert!(during.locked_pages > before.locked_pages);
        let (start_a, _) = span::<[u8; 32]>(&a);
        drop(b);
        assert!(
            pages().contains_key(&page_starts(start_a, 32).next().unwrap()),
            "a's page is still locked after b went"
        );
        assert_eq!(a[0], 1);
        drop(a);
    }
}
