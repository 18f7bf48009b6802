//! f32 matrix multiply: `C = beta·C + alpha·A·B` with packed panels and
//! register-blocked micro-kernels chosen at run time (AVX-512, AVX2+FMA, or
//! portable code), parallel over a grid of row blocks × column chunks.
//!
//! The structure is the classic one (Goto/BLIS): for each block of `KC` inner
//! indices, `B` is packed into `NR`-column panels once and shared by all
//! threads; each task packs its own `MC × KC` block of `A` into `MR`-row panels
//! and runs the micro-kernel over the tile grid. Packing buffers live in
//! per-thread workspaces that only grow, so a warm matmul allocates nothing.
//! Operands may have any (non-negative) row and column strides, so transposed
//! views need no copy.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Inner-dimension block: `KC` rows of a B panel stay in L1 while a tile runs.
const KC: usize = 256;
/// Largest row block of A packed at once (fits in L2 with its B panel).
const MC_MAX: usize = 192;
/// Column block of B packed at once.
const NC: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    /// The best kernel set this CPU supports.
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Every kernel set this CPU can run (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    /// Micro-tile rows and columns.
    fn tile(self) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (12, 32),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (6, 16),
            Isa::Portable => (4, 8),
        }
    }
}

/// A strided read-only matrix operand.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: `Mat` is a read-only view; the caller of `sgemm` guarantees the data
// outlives the call and is not written during it.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        // SAFETY: the caller keeps (i, j) inside the operand's extent.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

thread_local! {
    /// This thread's packed-A block.
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The packed-B block of a product this thread drives.
    static B_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's workspace `key`, grown to at least `len`
/// elements (only the first calls allocate). If the workspace is in use (a
/// rayon worker that stole a task while inside another product), a temporary
/// buffer is used instead.
fn with_workspace<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let max = if std::ptr::eq(key, &A_PACK) { &A_MAX } else { &B_MAX };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            super::scratch::grow(&mut v, len, max);
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Largest packing workspaces any thread needed.
static A_MAX: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static B_MAX: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Grows this thread's packing workspaces to the largest sizes seen.
pub(crate) fn warm_workspaces() {
    use std::sync::atomic::Ordering;
    with_workspace(&A_PACK, A_MAX.load(Ordering::Relaxed), |_| ());
    with_workspace(&B_PACK, B_MAX.load(Ordering::Relaxed), |_| ());
}

/// `C[m×n] = beta·C + alpha·A[m×k]·B[k×n]`, `C` contiguous row-major. When
/// `read_c` is false, C's old contents are ignored (beta is treated as 0).
///
/// # Safety
/// `a` and `b` must address readable `m×k` and `k×n` matrices at their strides
/// (non-negative), not aliasing `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    read_c: bool,
    beta: f32,
    alpha: f32,
    parallel: bool,
) {
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in c.iter_mut() {
            *v = if read_c { beta * *v } else { 0.0 };
        }
        return;
    }
    let (mr, nr) = isa.tile();
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let c_ptr = CPtr(c.as_mut_ptr());
    let b_len = NC.min(n).div_ceil(nr) * nr * KC.min(k);
    with_workspace(&B_PACK, b_len, |bp| {
        let mut jc = 0;
        while jc < n {
            let nc = NC.min(n - jc);
            let n_panels = nc.div_ceil(nr);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                if threads > 1 && n_panels > 1 && kc * nc >= 1 << 15 {
                    // Pack B's panels in parallel: each is independent.
                    bp[..n_panels * nr * kc]
                        .par_chunks_mut(nr * kc)
                        .enumerate()
                        .for_each(|(jp, panel)| {
                            let cols = nr.min(nc - jp * nr);
                            // SAFETY: rows pc..pc+kc and columns jc+jp*nr.. (cols of them) lie inside B.
                            unsafe { pack_b(b, pc, kc, jc + jp * nr, cols, nr, panel) };
                        });
                } else {
                    // SAFETY: rows pc..pc+kc and columns jc..jc+nc lie inside B.
                    unsafe { pack_b(b, pc, kc, jc, nc, nr, bp) };
                }
                let b_pack: &[f32] = bp;
                let first = pc == 0;
                let (beta_k, load_c) = if first { (beta, read_c) } else { (1.0, true) };
                // A grid of row blocks × column chunks with enough tasks for every thread.
                // Several tasks per thread when the rows allow, so that a thread
                // slowed by other work is balanced by stealing.
                let mut row_blocks = m.div_ceil(MC_MAX);
                let per = if m >= 64 * mr { 4 * threads } else { threads };
                if m >= mr * threads {
                    row_blocks = row_blocks.div_ceil(per) * per;
                }
                let mc = m.div_ceil(row_blocks).div_ceil(mr) * mr;
                let row_blocks = m.div_ceil(mc);
                let col_chunks = if row_blocks >= threads {
                    1
                } else {
                    (threads * 2).div_ceil(row_blocks).min(n_panels)
                };
                let panels_per_chunk = n_panels.div_ceil(col_chunks);
                let col_chunks = n_panels.div_ceil(panels_per_chunk);
                let task = |t: usize| {
                    let (rb, cb) = (t / col_chunks, t % col_chunks);
                    let ic = rb * mc;
                    let mcb = mc.min(m - ic);
                    let p0 = cb * panels_per_chunk;
                    let p1 = (p0 + panels_per_chunk).min(n_panels);
                    let a_panels = mcb.div_ceil(mr);
                    with_workspace(&A_PACK, a_panels * mr * kc, |ap| {
                        // SAFETY: rows ic..ic+mcb and columns pc..pc+kc lie inside A.
                        unsafe { pack_a(a, ic, mcb, pc, kc, mr, ap) };
                        for jp in p0..p1 {
                            let j = jp * nr;
                            let nrb = nr.min(nc - j);
                            let bpan = &b_pack[jp * nr * kc..(jp + 1) * nr * kc];
                            for ip in 0..a_panels {
                                let i = ip * mr;
                                let mrb = mr.min(mcb - i);
                                let apan = &ap[ip * mr * kc..(ip + 1) * mr * kc];
                                // SAFETY: the tile (ic+i.., jc+j..) of mrb×nrb lies inside C;
                                // tasks write disjoint tiles.
                                unsafe {
                                    let cp = c_ptr.get().add((ic + i) * n + jc + j);
                                    micro(isa, kc, apan, bpan, cp, n, mrb, nrb, alpha, beta_k, load_c);
                                }
                            }
                        }
                    });
                };
                let tasks = row_blocks * col_chunks;
                if threads > 1 && tasks > 1 && m * nc * kc >= 1 << 15 {
                    (0..tasks).into_par_iter().for_each(task);
                } else {
                    (0..tasks).for_each(task);
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

/// `B` packed once, for products that reuse it (a constant weight): the same
/// `NR`-column panels [`sgemm`] builds on every call, for every `NC × KC`
/// block, in one 64-byte aligned allocation. Made for one kernel set.
pub(crate) struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    data: Vec<f32>,
    /// Index of the first element in `data` (the aligned start).
    start: usize,
    /// Start (relative to `start`) of block `(jc / NC) * k_blocks + pc / KC`.
    blocks: Vec<usize>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({}x{}, {:?})", self.k, self.n, self.isa)
    }
}

impl PackedB {
    /// Packs the `k × n` matrix `b` for `isa`.
    ///
    /// # Safety
    /// `b` must address a readable `k×n` matrix at its (non-negative) strides.
    pub(crate) unsafe fn new(isa: Isa, k: usize, n: usize, b: Mat) -> PackedB {
        let (_, nr) = isa.tile();
        let mut blocks = Vec::new();
        let mut len = 0;
        let mut jc = 0;
        while jc < n {
            let nc = NC.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                blocks.push(len);
                len += nc.div_ceil(nr) * nr * kc;
                pc += kc;
            }
            jc += nc;
        }
        // 16 spare floats: room to align the start to 64 bytes.
        let mut data = vec![0f32; len + 16];
        let start = data.as_ptr().align_offset(64).min(16);
        let mut block = 0;
        let mut jc = 0;
        while jc < n {
            let nc = NC.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                let at = start + blocks[block];
                let out = &mut data[at..at + nc.div_ceil(nr) * nr * kc];
                // SAFETY: rows pc..pc+kc and columns jc..jc+nc lie inside B.
                unsafe { pack_b(b, pc, kc, jc, nc, nr, out) };
                block += 1;
                pc += kc;
            }
            jc += nc;
        }
        PackedB {
            isa,
            k,
            n,
            data,
            start,
            blocks,
        }
    }

    /// Rows (the inner dimension of the product).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// The packed panels of the block starting at column `jc`, row `pc`.
    fn block(&self, jc: usize, pc: usize) -> &[f32] {
        let (_, nr) = self.isa.tile();
        let i = (jc / NC) * self.k.div_ceil(KC) + pc / KC;
        let nc = NC.min(self.n - jc);
        let kc = KC.min(self.k - pc);
        let at = self.start + self.blocks[i];
        &self.data[at..at + nc.div_ceil(nr) * nr * kc]
    }
}

/// `C[m×n] = A[m×k]·B + bias` (bias: one value per column, broadcast over
/// the rows; none means zero) with B packed beforehand (`b.k() × b.n()`),
/// C contiguous row-major.
///
/// Because B needs no packing, the product is one parallel loop over units
/// of C (a tile row of `MR` rows × a few panels), each running over the whole
/// inner dimension: one fork-join per product, and small units that balance
/// well over threads (and over a thread slowed by other work). On AVX-512 a
/// row-major A (column stride 1) is read in place, as MLAS does; otherwise
/// each unit packs its `MR` rows per `KC` block.
///
/// # Safety
/// `a` must address a readable `m × b.k()` matrix at its (non-negative)
/// strides, not aliasing `c`; `bias`, when given, holds `b.n()` values.
pub(crate) unsafe fn sgemm_packed(m: usize, a: Mat, b: &PackedB, c: &mut [f32], bias: Option<&[f32]>, parallel: bool) {
    let (n, k, isa) = (b.n, b.k, b.isa);
    debug_assert_eq!(c.len(), m * n);
    debug_assert!(bias.is_none_or(|v| v.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(n) {
            match bias {
                Some(v) => row.copy_from_slice(v),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let (mr, nr) = isa.tile();
    let row_tiles = m.div_ceil(mr);
    let panels = n.div_ceil(nr);
    // A unit: one tile row × up to PANELS_PER_UNIT panels (fewer when that
    // leaves too few units to share).
    const PANELS_PER_UNIT: usize = 4;
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let mut per_unit = PANELS_PER_UNIT.min(panels);
    while per_unit > 1 && row_tiles * panels.div_ceil(per_unit) < 4 * threads {
        per_unit -= 1;
    }
    let chunks = panels.div_ceil(per_unit);
    let units = row_tiles * chunks;
    let direct = a.cs == 1 && isa_reads_a_in_place(isa);
    let c_ptr = CPtr(c.as_mut_ptr());
    // Units are numbered chunk-major, so a thread's run of consecutive units
    // reuses one column chunk of B across tile rows.
    let unit = |u: usize| {
        let (chunk, tile) = (u / row_tiles, u % row_tiles);
        let i = tile * mr;
        let mrb = mr.min(m - i);
        let p0 = chunk * per_unit;
        let p1 = (p0 + per_unit).min(panels);
        let run = |ap: &mut [f32]| {
            // The bias (or zero) first: every K block then accumulates.
            if let Some(v) = bias {
                for r in 0..mrb {
                    // SAFETY: row i + r, columns p0*nr..min(p1*nr, n) lie inside C;
                    // units write disjoint tiles.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            c_ptr.get().add((i + r) * n + p0 * nr),
                            (p1 * nr).min(n) - p0 * nr,
                        )
                    };
                    row.copy_from_slice(&v[p0 * nr..(p1 * nr).min(n)]);
                }
            }
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                let load_c = pc > 0 || bias.is_some();
                if !direct {
                    // SAFETY: rows i..i+mrb and columns pc..pc+kc lie inside A.
                    unsafe { pack_a(a, i, mrb, pc, kc, mr, ap) };
                }
                for jp in p0..p1 {
                    let j = jp * nr;
                    let nrb = nr.min(n - j);
                    let jc = j / NC * NC;
                    let block = b.block(jc, pc);
                    let bpan = &block[(j - jc) * kc..(j - jc + nr) * kc];
                    // SAFETY: the tile (i.., j..) of mrb×nrb lies inside C; units
                    // write disjoint tiles; A's rows i..i+mrb, columns pc..pc+kc
                    // are inside A.
                    unsafe {
                        let cp = c_ptr.get().add(i * n + j);
                        if direct {
                            let a0 = a.ptr.offset(i as isize * a.rs).add(pc);
                            micro_direct(isa, kc, a0, a.rs as usize, mrb, bpan, cp, n, nrb, load_c);
                        } else {
                            micro(isa, kc, &ap[..mr * kc], bpan, cp, n, mrb, nrb, 1.0, 1.0, load_c);
                        }
                    }
                }
                pc += kc;
            }
        };
        if direct {
            run(&mut []);
        } else {
            with_workspace(&A_PACK, mr * KC.min(k), run);
        }
    };
    if threads > 1 && units > 1 && m * n * k >= 1 << 15 {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}

/// Whether `isa` has a micro-kernel that reads a row-major A in place.
fn isa_reads_a_in_place(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// One tile with A read in place: rows `a + r·lda` (`r < mrb`), `kc` values
/// each; `C = ΣA·B` (plus C's old value with `load_c`).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro_direct(
    isa: Isa,
    kc: usize,
    a: *const f32,
    lda: usize,
    mrb: usize,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    nrb: usize,
    load_c: bool,
) {
    match isa {
        // SAFETY: the caller guarantees the A rows, the B panel and the C tile.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::micro_avx512_direct(kc, a, lda, mrb, b, c, ldc, nrb, load_c) },
        _ => unreachable!("micro_direct runs only where isa_reads_a_in_place"),
    }
}

/// A raw pointer to C shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C (see `sgemm`).
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}
impl CPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Packs rows `i0..i0+mc`, columns `p0..p0+kc` of A into `mr`-row panels,
/// k-major within a panel (`out[panel][p][i]`), zero-padding the last panel.
unsafe fn pack_a(a: Mat, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, out: &mut [f32]) {
    for (ip, panel) in out.chunks_mut(mr * kc).take(mc.div_ceil(mr)).enumerate() {
        let rows = mr.min(mc - ip * mr);
        for p in 0..kc {
            let dst = &mut panel[p * mr..(p + 1) * mr];
            for (i, d) in dst.iter_mut().enumerate() {
                // SAFETY: (i0 + ip*mr + i, p0 + p) is inside A for i < rows.
                *d = if i < rows {
                    unsafe { a.at(i0 + ip * mr + i, p0 + p) }
                } else {
                    0.0
                };
            }
        }
    }
}

/// Packs rows `p0..p0+kc`, columns `j0..j0+nc` of B into `nr`-column panels,
/// k-major within a panel (`out[panel][p][j]`), zero-padding the last panel.
unsafe fn pack_b(b: Mat, p0: usize, kc: usize, j0: usize, nc: usize, nr: usize, out: &mut [f32]) {
    for (jp, panel) in out.chunks_mut(nr * kc).take(nc.div_ceil(nr)).enumerate() {
        let cols = nr.min(nc - jp * nr);
        for p in 0..kc {
            let dst = &mut panel[p * nr..(p + 1) * nr];
            if b.cs == 1 && cols == nr {
                // SAFETY: the row segment is inside B.
                let src =
                    unsafe { std::slice::from_raw_parts(b.ptr.offset((p0 + p) as isize * b.rs).add(j0 + jp * nr), nr) };
                dst.copy_from_slice(src);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    // SAFETY: (p0 + p, j0 + jp*nr + j) is inside B for j < cols.
                    *d = if j < cols {
                        unsafe { b.at(p0 + p, j0 + jp * nr + j) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// One `mr × nr` tile (partial tiles: `mrb × nrb`): `C = beta·C + alpha·ΣA·B`
/// (C's old value is ignored when `!load_c`).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mrb: usize,
    nrb: usize,
    alpha: f32,
    beta: f32,
    load_c: bool,
) {
    // SAFETY (all arms): the caller guarantees the mrb×nrb tile at `c` with row
    // stride ldc is writable; a and b hold kc full packed panels.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::micro_avx512(kc, a, b, c, ldc, mrb, nrb, alpha, beta, load_c) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::micro_avx2(kc, a, b, c, ldc, mrb, nrb, alpha, beta, load_c) },
        Isa::Portable => unsafe { micro_portable(kc, a, b, c, ldc, mrb, nrb, alpha, beta, load_c) },
    }
}

/// Writes an accumulated `MR × NR` tile (row-major in `acc`) into C.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile<const MR: usize, const NR: usize>(
    acc: &[[f32; NR]; MR],
    c: *mut f32,
    ldc: usize,
    mrb: usize,
    nrb: usize,
    alpha: f32,
    beta: f32,
    load_c: bool,
) {
    for (i, row) in acc.iter().enumerate().take(mrb) {
        for (j, &v) in row.iter().enumerate().take(nrb) {
            // SAFETY: inside the tile (see `micro`).
            unsafe {
                let p = c.add(i * ldc + j);
                *p = if load_c { beta * *p + alpha * v } else { alpha * v };
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn micro_portable(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mrb: usize,
    nrb: usize,
    alpha: f32,
    beta: f32,
    load_c: bool,
) {
    const MR: usize = 4;
    const NR: usize = 8;
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let ap = &a[p * MR..p * MR + MR];
        let bp = &b[p * NR..p * NR + NR];
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    // SAFETY: see `micro`.
    unsafe { store_tile(&acc, c, ldc, mrb, nrb, alpha, beta, load_c) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::store_tile;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_avx512(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        mrb: usize,
        nrb: usize,
        alpha: f32,
        beta: f32,
        load_c: bool,
    ) {
        const MR: usize = 12;
        const NR: usize = 32;
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc and the panels hold kc rows of MR / NR values.
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(p * NR));
                let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*ap.add(p * MR + i));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
            }
        }
        if mrb == MR && nrb == NR {
            let va = _mm512_set1_ps(alpha);
            let vb = _mm512_set1_ps(beta);
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: a full tile is inside C (see `micro`).
                unsafe {
                    let row = c.add(i * ldc);
                    for (h, &v) in acc.iter().enumerate() {
                        let p = row.add(h * 16);
                        let r = if load_c {
                            _mm512_fmadd_ps(va, v, _mm512_mul_ps(vb, _mm512_loadu_ps(p)))
                        } else {
                            _mm512_mul_ps(va, v)
                        };
                        _mm512_storeu_ps(p, r);
                    }
                }
            }
        } else {
            let mut tile = [[0f32; NR]; MR];
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `tile` holds 32 floats.
                unsafe {
                    _mm512_storeu_ps(tile[i].as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(tile[i].as_mut_ptr().add(16), acc[1]);
                }
            }
            // SAFETY: see `micro`.
            unsafe { store_tile(&tile, c, ldc, mrb, nrb, alpha, beta, load_c) }
        }
    }

    /// The 12×32 AVX-512 tile reading 12 rows of A in place (`a + r·lda`);
    /// rows past `mrb` repeat the last valid row (their results are not stored).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_avx512_direct(
        kc: usize,
        a: *const f32,
        lda: usize,
        mrb: usize,
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        nrb: usize,
        load_c: bool,
    ) {
        const MR: usize = 12;
        const NR: usize = 32;
        debug_assert!(b.len() >= kc * NR && (1..=MR).contains(&mrb));
        let mut rows = [a; MR];
        for (r, row) in rows.iter_mut().enumerate() {
            // SAFETY: rows below mrb are inside A (the caller's guarantee).
            *row = unsafe { a.add(r.min(mrb - 1) * lda) };
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let bp = b.as_ptr();
        for p in 0..kc {
            // SAFETY: p < kc; each row holds kc values and the panel kc rows of NR.
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(p * NR));
                let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    let ai = _mm512_set1_ps(*row.add(p));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
            }
        }
        if mrb == MR && nrb == NR {
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: a full tile is inside C.
                unsafe {
                    let row = c.add(i * ldc);
                    for (h, &v) in acc.iter().enumerate() {
                        let p = row.add(h * 16);
                        let r = if load_c {
                            _mm512_add_ps(v, _mm512_loadu_ps(p))
                        } else {
                            v
                        };
                        _mm512_storeu_ps(p, r);
                    }
                }
            }
        } else {
            let mut tile = [[0f32; NR]; MR];
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `tile` holds 32 floats.
                unsafe {
                    _mm512_storeu_ps(tile[i].as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(tile[i].as_mut_ptr().add(16), acc[1]);
                }
            }
            // SAFETY: the mrb×nrb tile is inside C.
            unsafe { store_tile(&tile, c, ldc, mrb, nrb, 1.0, 1.0, load_c) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_avx2(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        mrb: usize,
        nrb: usize,
        alpha: f32,
        beta: f32,
        load_c: bool,
    ) {
        const MR: usize = 6;
        const NR: usize = 16;
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc and the panels hold kc rows of MR / NR values.
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add(p * NR));
                let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(*ap.add(p * MR + i));
                    acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
                }
            }
        }
        let mut tile = [[0f32; NR]; MR];
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: each row of `tile` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(tile[i].as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), acc[1]);
            }
        }
        // SAFETY: see `micro`.
        unsafe { store_tile(&tile, c, ldc, mrb, nrb, alpha, beta, load_c) }
    }
}

#[cfg(test)]
mod tests {
    /// `v` as a matrix: row-major with leading dimension `ld`, or transposed
    /// (column-major) with leading dimension `ld_t`.
    fn view(v: &[f32], transposed: bool, ld_t: usize, ld: usize) -> Mat {
        if transposed {
            Mat {
                ptr: v.as_ptr(),
                rs: 1,
                cs: ld_t as isize,
            }
        } else {
            Mat {
                ptr: v.as_ptr(),
                rs: ld as isize,
                cs: 1,
            }
        }
    }

    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// B packed once ([`PackedB`]), with and without a bias, for every kernel
    /// set: partial tiles, several KC blocks, more than NC columns, a
    /// transposed B; C's old contents ignored; checked against f64.
    #[test]
    fn prepacked_b_matches_f64_reference_for_every_isa() {
        let mut r = ChaCha8Rng::seed_from_u64(21);
        for isa in Isa::available() {
            for &(m, n, k, tb) in &[
                (1, 1, 1, false),
                (13, 33, 300, false),
                (40, 70, 513, true),
                (200, 3, 17, false),
                (3, NC + 37, 260, false),
                (130, 384, 384, true),
            ] {
                let av: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0..1.0)).collect();
                let bv: Vec<f32> = (0..k * n).map(|_| r.gen_range(-1.0..1.0)).collect();
                // A transposed B goes with a transposed A (stored k×m), which
                // takes the packed-A path.
                let ta = tb;
                let a = view(&av, ta, m, k);
                let b = view(&bv, tb, k, n);
                let packed = unsafe { PackedB::new(isa, k, n, b) };
                assert_eq!((packed.k(), packed.n()), (k, n));
                let bias: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
                for with_bias in [false, true] {
                    // Old contents that must not leak into the result.
                    let mut c: Vec<f32> = (0..m * n).map(|_| r.gen_range(-1.0..1.0)).collect();
                    let bv_opt = with_bias.then_some(bias.as_slice());
                    unsafe { sgemm_packed(m, a, &packed, &mut c, bv_opt, true) };
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = 0f64;
                            for p in 0..k {
                                let y = if tb { bv[j * k + p] } else { bv[p * n + j] } as f64;
                                let x = if ta { av[p * m + i] } else { av[i * k + p] } as f64;
                                s += x * y;
                            }
                            let want = s + if with_bias { bias[j] as f64 } else { 0.0 };
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).sqrt() + 1e-5 * want.abs(),
                                "{isa:?} m{m} n{n} k{k} ta{ta} tb{tb} bias{with_bias} at ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every kernel set, odd sizes (partial tiles, several KC blocks), strided
    /// and transposed operands, alpha/beta, against an f64 reference.
    #[test]
    fn matches_f64_reference_for_every_isa_and_layout() {
        let mut r = ChaCha8Rng::seed_from_u64(9);
        for isa in Isa::available() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (3, 5, 7),
                (13, 33, 300),
                (40, 70, 513),
                (1, 100, 64),
                (200, 3, 17),
            ] {
                for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                    let av: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0..1.0)).collect();
                    let bv: Vec<f32> = (0..k * n).map(|_| r.gen_range(-1.0..1.0)).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| r.gen_range(-1.0..1.0)).collect();
                    // Stored as A (m×k) or Aᵀ (k×m); B likewise.
                    let a = view(&av, ta, m, k);
                    let b = view(&bv, tb, k, n);
                    let (alpha, beta) = (0.75f32, -0.5f32);
                    for read_c in [false, true] {
                        let mut c = c0.clone();
                        unsafe { sgemm(isa, m, n, k, a, b, &mut c, read_c, beta, alpha, true) };
                        for i in 0..m {
                            for j in 0..n {
                                let mut s = 0f64;
                                for p in 0..k {
                                    let x = if ta { av[p * m + i] } else { av[i * k + p] } as f64;
                                    let y = if tb { bv[j * k + p] } else { bv[p * n + j] } as f64;
                                    s += x * y;
                                }
                                let want = alpha as f64 * s
                                    + if read_c {
                                        beta as f64 * c0[i * n + j] as f64
                                    } else {
                                        0.0
                                    };
                                let got = c[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-5 * (k as f64).sqrt() + 1e-5 * want.abs(),
                                    "{isa:?} m{m} n{n} k{k} ta{ta} tb{tb} read_c{read_c} at ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
