//! Searching files for secrets: every encoding a leaked key or share could
//! take, looked for byte by byte.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use crypto_core::Key;

/// Every encoding of `bytes` a leak could take.
pub fn encodings(bytes: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        bytes.to_vec(),
        hex::encode(bytes).into_bytes(),
        hex::encode_upper(bytes).into_bytes(),
        STANDARD.encode(bytes).into_bytes(),
        STANDARD_NO_PAD.encode(bytes).into_bytes(),
        URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
    ]
}

/// A key's raw bytes (through the one door crypto-core opens for them).
pub fn key_bytes(key: &Key) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(key.expose_base64_for_handover().as_bytes())
        .unwrap()
}

/// The raw Shamir data of a share line.
pub fn share_data(line: &str) -> Vec<u8> {
    let data = line
        .split(" data=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a share line has data=");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(data)
        .unwrap()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Panics naming the secret and the place if any secret occurs in any place.
pub fn assert_absent(places: &[(String, Vec<u8>)], secrets: &[(String, Vec<u8>)]) {
    for (place, content) in places {
        for (what, needle) in secrets {
            assert!(
                !content
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice()),
                "{what} bytes found in {place}"
            );
        }
    }
}

/// Every readable mapping of process `pid`'s memory, named by its line in
/// `/proc/<pid>/maps`, read through `/proc/<pid>/mem` (needs root or
/// CAP_SYS_PTRACE: keyholderd makes itself non-dumpable). Mappings that
/// cannot be read (`[vvar]`, guard pages) are skipped; the count of bytes
/// read is in the result so a caller can check the scan saw something.
pub fn process_memory(pid: u32) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut regions = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        regions.push((format!("memory {line}"), buf));
    }
    Ok(regions)
}

/// Whether this process may read another's memory (root; CI is).
pub fn can_read_memory() -> bool {
    // /proc/self belongs to the effective user.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// The names of the `regions` that hold `needle`.
fn holding<'a>(
    regions: &'a [(String, Vec<u8>)],
    needle: &'a [u8],
) -> impl Iterator<Item = &'a str> + 'a {
    regions
        .iter()
        .filter(move |(_, bytes)| memchr::memmem::find(bytes, needle).is_some())
        .map(|(name, _)| name.as_str())
}

/// The mappings of `pid` that hold `needle`.
pub fn memory_holding(pid: u32, needle: &[u8]) -> Vec<String> {
    let regions = process_memory(pid).expect("reading the daemon's memory");
    holding(&regions, needle).map(str::to_owned).collect()
}

/// Waits (up to 5 s: connections close and threads idle a moment after the
/// answer) until no secret is in `pid`'s memory; panics naming each secret
/// and the mapping that still holds it.
pub async fn assert_memory_clean(pid: u32, secrets: &[(String, Vec<u8>)]) {
    let mut found = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let regions = process_memory(pid).expect("reading the daemon's memory");
        let scanned: usize = regions.iter().map(|(_, b)| b.len()).sum();
        assert!(scanned > 1 << 20, "the scan read only {scanned} bytes");
        found = secrets
            .iter()
            .flat_map(|(what, needle)| {
                holding(&regions, needle).map(move |region| format!("  {what} in {region}"))
            })
            .collect::<Vec<_>>();
        if found.is_empty() {
            return;
        }
    }
    panic!("secrets left in the daemon's memory:\n{}", found.join("\n"));
}
