//! On-disk cache of compiled kernels (PTX).
//!
//! Entries live in `$STITCH_CACHE_DIR/cuda-kernels/` (default
//! `~/.cache/stitch/cuda-kernels/`), one file per kernel named by the SHA-256
//! of everything that determines the PTX: the source, the NVRTC options, the
//! GPU architecture, the NVRTC version and the driver version. A hit touches
//! the file; when the directory grows past its cap, the least recently used
//! entries are removed. Writes go through a temporary file and a rename, so
//! concurrent processes never read a half-written entry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Default size cap of the cache directory.
pub const DEFAULT_CAP_BYTES: u64 = 256 << 20;

/// A directory of PTX files keyed by content hash.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    cap: u64,
}

/// Everything that determines a compiled kernel.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// CUDA C source.
    pub source: &'a str,
    /// NVRTC options, in order.
    pub options: &'a [String],
    /// Target architecture, e.g. `sm_90`.
    pub arch: &'a str,
    /// NVRTC version, e.g. `(13, 0)`.
    pub nvrtc: (i32, i32),
    /// CUDA driver version as the driver reports it, e.g. `13000`.
    pub driver: i32,
}

impl KeyParts<'_> {
    /// The hex SHA-256 key.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"stitch-cuda-ptx-v1\0");
        h.update(self.source.as_bytes());
        h.update([0]);
        for o in self.options {
            h.update(o.as_bytes());
            h.update([0]);
        }
        h.update(self.arch.as_bytes());
        h.update([0]);
        h.update(format!("{}.{}\0{}", self.nvrtc.0, self.nvrtc.1, self.driver).as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl KernelCache {
    /// The cache under `$STITCH_CACHE_DIR/cuda-kernels` (or `~/.cache/stitch/...`);
    /// disabled when no directory can be found.
    pub fn from_env() -> KernelCache {
        let base = std::env::var_os("STITCH_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("stitch")));
        KernelCache {
            dir: base.map(|b| b.join("cuda-kernels")),
            cap: DEFAULT_CAP_BYTES,
        }
    }

    /// A cache in `dir` holding at most `cap` bytes.
    pub fn new(dir: impl Into<PathBuf>, cap: u64) -> KernelCache {
        KernelCache {
            dir: Some(dir.into()),
            cap,
        }
    }

    /// A cache that stores nothing.
    pub fn disabled() -> KernelCache {
        KernelCache { dir: None, cap: 0 }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.ptx")))
    }

    /// The cached PTX for `key`, if present (and marks it recently used).
    pub fn get(&self, key: &str) -> Option<String> {
        let p = self.path(key)?;
        let text = std::fs::read_to_string(&p).ok()?;
        // Touch: eviction removes the least recently used entries first.
        if let Ok(f) = std::fs::File::options().append(true).open(&p) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Some(text)
    }

    /// Stores `ptx` under `key`, then evicts old entries beyond the cap. Errors
    /// are ignored: the cache only saves time.
    pub fn put(&self, key: &str, ptx: &str) {
        let (Some(dir), Some(p)) = (self.dir.as_ref(), self.path(key)) else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, ptx).is_ok() && std::fs::rename(&tmp, &p).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        self.evict(dir);
    }

    fn evict(&self, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "ptx"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.cap {
            return;
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.cap {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(src: &'a str, opts: &'a [String]) -> KeyParts<'a> {
        KeyParts {
            source: src,
            options: opts,
            arch: "sm_90",
            nvrtc: (13, 0),
            driver: 13000,
        }
    }

    #[test]
    fn key_depends_on_every_part() {
        let opts = vec!["--fmad=false".to_string()];
        let base = parts("a", &opts).key();
        assert_eq!(base, parts("a", &opts).key());
        assert_ne!(base, parts("b", &opts).key());
        assert_ne!(base, parts("a", &[]).key());
        let mut p = parts("a", &opts);
        p.arch = "sm_80";
        assert_ne!(base, p.key());
        let mut p = parts("a", &opts);
        p.nvrtc = (13, 1);
        assert_ne!(base, p.key());
        let mut p = parts("a", &opts);
        p.driver = 13010;
        assert_ne!(base, p.key());
    }

    #[test]
    fn stores_and_evicts_least_recently_used() {
        let dir = std::env::temp_dir().join(format!("stitch-kcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = KernelCache::new(&dir, 2500);
        let body = "x".repeat(1000);
        cache.put("k1", &body);
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("k2", &body);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // k1 used again: k2 is now the oldest.
        assert_eq!(cache.get("k1").as_deref(), Some(body.as_str()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("k3", &body);
        assert!(cache.get("k1").is_some());
        assert!(cache.get("k2").is_none(), "the least recently used entry is evicted");
        assert!(cache.get("k3").is_some());
        assert!(KernelCache::disabled().get("k1").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
