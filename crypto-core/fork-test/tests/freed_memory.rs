//! Key bytes never reach freed memory: a keyring parsed from the hook's
//! hand-over, used, and dropped leaves none of its key in any heap block it
//! frees. The AES key schedule starts with the key itself, and the `aes`
//! crate wipes it on drop only with its `zeroize` feature; without it the
//! schedule went back to the allocator whole, for any later allocation (or
//! a core dump) to read. The allocator here scans every block freed while
//! the keyring lives for the key's first 16 bytes.

#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crypto_core::Keyring;

/// Bytes 0..32 in base64: the key of the hand-over below.
const HANDOVER: &str = r#"{"keyring":"orders","write_version":9,"keys":[{"version":9,"key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}"#;
const NEEDLE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

static WATCHING: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, scanning each block it frees while `WATCHING`.
struct Scanning;

#[allow(unsafe_code)]
// SAFETY: every call is passed on to `System` unchanged; `dealloc` only
// reads the block it is given before freeing it.
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.load(Ordering::SeqCst) && layout.size() >= NEEDLE.len() {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes this
            // allocator handed out (the caller's contract), freed below.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                FOUND.fetch_add(1, Ordering::SeqCst);
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Scanning = Scanning;

#[test]
fn a_dropped_keyring_leaves_no_key_bytes_in_freed_memory() {
    // The scan finds what it looks for: a block holding the bytes, freed.
    WATCHING.store(true, Ordering::SeqCst);
    drop(std::hint::black_box(NEEDLE.to_vec()));
    WATCHING.store(false, Ordering::SeqCst);
    assert_eq!(
        FOUND.swap(0, Ordering::SeqCst),
        1,
        "the scan missed a freed block"
    );

    WATCHING.store(true, Ordering::SeqCst);
    let keyring = Keyring::from_handover_json(HANDOVER).unwrap();
    let record = keyring.encrypt(b"a record", b"row 1").unwrap();
    let plaintext = keyring.decrypt(&record, b"row 1").unwrap();
    assert_eq!(plaintext.as_slice(), b"a record");
    drop(plaintext);
    drop(keyring);
    WATCHING.store(false, Ordering::SeqCst);
    assert_eq!(
        FOUND.load(Ordering::SeqCst),
        0,
        "heap blocks holding key bytes were freed without being wiped"
    );
}
