//! `stitch info`: version, build features, and the devices stitch can use.

use std::fmt::Write;

/// CPU model name from /proc/cpuinfo, when available.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
}

/// SIMD features the CPU kernels can use on this machine.
pub fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
            ("avx512bf16", std::arch::is_x86_feature_detected!("avx512bf16")),
        ] {
            if on {
                f.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    f.push("neon");
    f
}

/// The text `stitch info` prints.
pub fn report() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "stitch {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        s,
        "build: {} profile, target {}",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::env::consts::ARCH
    );
    let _ = writeln!(s, "backends: cpu, cuda (CUDA 13 libraries loaded at run time)");
    let _ = writeln!(s, "cache: {}", stitch_core::cache::cache_dir().display());
    let _ = writeln!(s, "devices:");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let _ = writeln!(
        s,
        "  cpu    {} — {} hardware threads, {} worker threads (RAYON_NUM_THREADS), SIMD: {}",
        cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        cores,
        rayon::current_num_threads(),
        simd_features().join(" ")
    );
    match stitch_cuda::devices() {
        Ok(gpus) if gpus.is_empty() => {
            let _ = writeln!(s, "  cuda   no CUDA device found");
        }
        Ok(gpus) => {
            for g in gpus {
                let _ = writeln!(
                    s,
                    "  cuda:{} {} — compute capability {}.{}, {:.1} GiB memory ({:.1} GiB free)",
                    g.ordinal,
                    g.name,
                    g.capability.0,
                    g.capability.1,
                    g.total_memory as f64 / (1u64 << 30) as f64,
                    g.free_memory as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  cuda   not available: {e}");
        }
    }
    s
}
