//! Where downloaded models and data live: `$STITCH_CACHE_DIR`, default
//! `~/.cache/stitch`. Every fetcher in the project stores its files under here.

use std::path::PathBuf;

/// The cache directory (not created).
///
/// ```
/// let dir = stitch_core::cache::cache_dir();
/// assert!(dir.is_absolute() || std::env::var_os("STITCH_CACHE_DIR").is_some());
/// ```
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STITCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("stitch")
}
