//! Inference matmul `x @ W^T` against a weight packed once, for CPU f32 with AVX-512.
//!
//! gemm repacks the weight into panels on every call. For the short sequences of a control loop
//! that copy is a large share of a projection's time (19 % of a 64-token forward of the
//! benchmark Llama under perf), and it buys nothing: the weight never changes between calls.
//! Here the weight is packed once into panels of 64 output columns (`[panel][k][64]`, zero
//! padded), and a 6-row x 64-column register-blocked kernel streams each panel once per 6 rows
//! of input. Measured here on the benchmark Llama's projection shapes (2 threads, 64 and 256
//! rows): 208-222 GFLOP/s, 90-96 % of the FMA peak, against gemm's 180-203 with its own packing.
//! `rudder bench llama` reports the forward pass's share of that peak.
//!
//! Every element of the output is written, so callers may hand in an uninitialised buffer.
//! Without AVX-512 (or off x86-64) [`PackedWeight::new`] returns `None` and callers keep gemm.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Output columns per panel: four AVX-512 vectors of f32.
pub const PANEL: usize = 64;
/// Input rows per kernel call: 6 x 4 accumulators plus 4 weight vectors fit the 32 registers.
const ROWS: usize = 6;

/// `out = act(gate) * up`, element-wise (see [`super::fastmath::silu_mul`]).
pub type GateFn = fn(&[f32], &[f32], &mut [std::mem::MaybeUninit<f32>]);

/// What the kernel does with a finished register block.
#[derive(Clone, Copy)]
pub enum Epilogue {
    /// Store all [`PANEL`] columns.
    Store,
    /// The panel holds 32 gate columns then the same 32 up columns: store `act(gate) * up`,
    /// 32 output columns. A gated MLP's gate and up products then never reach memory: no gate
    /// and up tensors, no separate activation pass.
    Gated(GateFn),
}

impl Epilogue {
    /// Output columns one panel produces.
    fn cols(self) -> usize {
        match self {
            Self::Store => PANEL,
            Self::Gated(_) => PANEL / 2,
        }
    }
}

/// A step run on each finished output block of [`PackedWeight::matmul_then`]: the output's
/// base pointer, the block's columns and rows.
pub type FinishBlock<'a> =
    dyn Fn(*mut f32, std::ops::Range<usize>, std::ops::Range<usize>) + Sync + 'a;

/// Bytes held by packed weights in this process, against [`budget_bytes`].
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The most memory packed copies may take (they double a weight's footprint): 4 GiB, or
/// `RUDDER_PACKED_WEIGHTS_MIB`. Past it, further layers keep gemm.
fn budget_bytes() -> usize {
    super::env_number("RUDDER_PACKED_WEIGHTS_MIB").map_or(4 << 30, |mib| (mib as usize) << 20)
}

/// A `[k, n]` weight (`W^T`) in panels of [`PANEL`] columns.
pub struct PackedWeight {
    k: usize,
    /// Output columns.
    n: usize,
    data: Vec<f32>,
    epilogue: Epilogue,
}

/// Calls `f` with a contiguous CPU f32 tensor's values; `None` for any other tensor.
pub fn with_cpu_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> Option<R>) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    f(&data[start..end])
}

/// Takes `floats` from the packing budget; `None` when it is spent.
fn reserve(floats: usize) -> Option<()> {
    let bytes = floats * 4;
    let reserved = PACKED_BYTES.fetch_add(bytes, Ordering::Relaxed);
    if reserved + bytes > budget_bytes() {
        PACKED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
        return None;
    }
    Some(())
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl Drop for PackedWeight {
    fn drop(&mut self) {
        PACKED_BYTES.fetch_sub(self.data.len() * 4, Ordering::Relaxed);
    }
}

/// Whether this CPU runs the packed kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedWeight {
    /// Packs a row-major `[k, n]` weight; `None` without AVX-512, for an empty weight, or when
    /// the process's packing budget is spent.
    pub fn new(wt: &[f32], k: usize, n: usize) -> Option<Self> {
        if !available() || k == 0 || n == 0 || wt.len() != k * n {
            return None;
        }
        reserve(n.div_ceil(PANEL) * k * PANEL)?;
        let mut data = Vec::new();
        pack_panels(&mut data, wt, (k, n), (n, 1), 1.0);
        Some(Self {
            k,
            n,
            data,
            epilogue: Epilogue::Store,
        })
    }

    /// Packs a gated MLP's `[k, n]` gate and up weights (`W^T` each) side by side, for
    /// `act(x @ gate) * (x @ up)` in one pass; `None` as for [`PackedWeight::new`].
    pub fn new_gated(gate: &[f32], up: &[f32], k: usize, n: usize, act: GateFn) -> Option<Self> {
        if !available() || k == 0 || n == 0 || gate.len() != k * n || up.len() != k * n {
            return None;
        }
        let half = PANEL / 2;
        let panels = n.div_ceil(half);
        reserve(panels * k * PANEL)?;
        let mut data = vec![0f32; panels * k * PANEL];
        for (p, panel) in data.chunks_exact_mut(k * PANEL).enumerate() {
            let c0 = p * half;
            let cols = (n - c0).min(half);
            for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                row[..cols].copy_from_slice(&gate[i * n + c0..i * n + c0 + cols]);
                row[half..half + cols].copy_from_slice(&up[i * n + c0..i * n + c0 + cols]);
            }
        }
        Some(Self {
            k,
            n,
            data,
            epilogue: Epilogue::Gated(act),
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// [`PackedWeight::matmul_add`] into a fresh `[m, n]` storage, for the candle ops below.
    fn product_storage(
        &self,
        x: &[f32],
        m: usize,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let mut out = super::fastmath::uninit_buffer(m * self.n);
        self.matmul_add(x, m, residual, &mut out)?;
        // SAFETY: the packed kernel writes every element of the m x n output.
        let out = unsafe { super::fastmath::assume_init(out) };
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((m, self.n)),
        ))
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `out[m, n] = x[m, k] @ W^T`, both row-major and contiguous, on the spin pool (rayon when
    /// the pool is busy). The blocks call [`PackedWeight::matmul_add`] directly; the tests
    /// call this.
    #[cfg(test)]
    pub fn matmul(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        self.matmul_add(x, m, None, out)
    }

    /// `out[m, n] = x[m, k] @ W^T` (both row-major and contiguous, on the spin pool; rayon when
    /// the pool is busy) plus `residual` (`m x n`, row-major), added as each register
    /// block is stored: a residual connection without a separate pass over the activations.
    /// The sum is `product + residual` in f32, bit for bit what a separate add gives.
    pub fn matmul_add(
        &self,
        x: &[f32],
        m: usize,
        residual: Option<&[f32]>,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        self.matmul_then(x, m, residual, out, None)
    }

    /// [`PackedWeight::matmul_add`], then `finish(out, columns, rows)` on each block of the
    /// output as soon as its task has stored it (while it is still in this core's cache): the
    /// rotary embedding of q and k. `out` points at the m x n output; blocks cover whole
    /// panels' columns and are disjoint, and `finish` may rewrite its block in place.
    pub fn matmul_then(
        &self,
        x: &[f32],
        m: usize,
        residual: Option<&[f32]>,
        out: &mut [std::mem::MaybeUninit<f32>],
        finish: Option<&FinishBlock<'_>>,
    ) -> candle_core::Result<()> {
        if let Some(r) = residual {
            if r.len() != m * self.n || !matches!(self.epilogue, Epilogue::Store) {
                candle_core::bail!(
                    "packed matmul: a residual of {} values for {m} x {} outputs",
                    r.len(),
                    self.n
                );
            }
        }
        if x.len() != m * self.k || out.len() != m * self.n {
            candle_core::bail!(
                "packed matmul: {} inputs and {} outputs for {m} rows of a {} x {} weight",
                x.len(),
                out.len(),
                self.k,
                self.n
            );
        }
        if m == 0 {
            return Ok(());
        }
        let panels = self.n.div_ceil(self.epilogue.cols());
        let threads = super::spin_pool::threads();
        // Split output columns when there are enough panels; otherwise split rows, so a narrow
        // projection over many tokens still uses every thread. Each thread takes a contiguous
        // run of panels (measured faster here than handing out single panels, most of all in
        // the shared machine's slow spells), and panels that would leave threads idle at the
        // end (43 panels on 2 threads) are split by rows, one share per thread, claimed by
        // whichever thread comes free.
        let tasks: Vec<(usize, usize, usize, usize)> = if panels >= 2 * threads && m >= 2 * ROWS {
            let whole = panels - panels % threads;
            let blocks = m.div_ceil(ROWS);
            let mut tasks: Vec<_> = (0..threads)
                .map(|i| (i * whole / threads, (i + 1) * whole / threads, 0, m))
                .collect();
            for p in whole..panels {
                tasks.extend((0..threads).filter_map(|i| {
                    let r0 = (i * blocks / threads) * ROWS;
                    let r1 = (((i + 1) * blocks / threads) * ROWS).min(m);
                    (r1 > r0).then_some((p, p + 1, r0, r1))
                }));
            }
            tasks
        } else if panels >= threads || m < 2 * ROWS {
            let t = threads.min(panels);
            (0..t)
                .map(|i| (i * panels / t, (i + 1) * panels / t, 0, m))
                .filter(|&(p0, p1, _, _)| p1 > p0)
                .collect()
        } else {
            let blocks = m.div_ceil(ROWS);
            let t = threads.min(blocks);
            (0..t)
                .map(|i| {
                    let r0 = (i * blocks / t) * ROWS;
                    let r1 = (((i + 1) * blocks / t) * ROWS).min(m);
                    (0, panels, r0, r1)
                })
                .filter(|&(_, _, r0, r1)| r1 > r0)
                .collect()
        };
        let (xp, op) = (x.as_ptr() as usize, out.as_mut_ptr() as usize);
        let rp = residual.map_or(0, |r| r.as_ptr() as usize);
        let run = |&(p0, p1, r0, r1): &(usize, usize, usize, usize)| {
            // SAFETY: tasks cover disjoint (panel, row) blocks of `out`; `x` holds m rows of k,
            // `out` and `residual` m rows of n, and all outlive the scope below. `available()`
            // held when the weight was packed.
            unsafe {
                self.block(
                    xp as *const f32,
                    op as *mut f32,
                    rp as *const f32,
                    (p0, p1),
                    (r0, r1),
                )
            }
            if let Some(finish) = finish {
                let per = self.epilogue.cols();
                finish(op as *mut f32, p0 * per..(p1 * per).min(self.n), r0..r1);
            }
        };
        if !super::spin_pool::run(tasks.len(), &|i| run(&tasks[i])) {
            rayon::scope(|s| {
                for t in &tasks {
                    s.spawn(move |_| run(t));
                }
            });
        }
        Ok(())
    }

    /// Panels `p0..p1` for rows `r0..r1`, plus the residual unless it is null.
    ///
    /// # Safety
    /// `x` must hold the matmul's m x k input and `out` (and a non-null `res`) its m x n
    /// output with `r1 <= m`, and the CPU must have AVX-512F.
    unsafe fn block(
        &self,
        x: *const f32,
        out: *mut f32,
        res: *const f32,
        (p0, p1): (usize, usize),
        (r0, r1): (usize, usize),
    ) {
        let (k, n) = (self.k, self.n);
        // SAFETY: forwarded from the caller; rows r0..r1 of x, out and res lie inside them.
        unsafe {
            let res = if res.is_null() { res } else { res.add(r0 * n) };
            panel_matmul(
                (x.add(r0 * k), k),
                (r1 - r0, k),
                (self.data.as_ptr(), k, n),
                (p0, p1),
                (out.add(r0 * n), n),
                self.epilogue,
                res,
            )
        }
    }
}

/// Packs the `k x n` matrix with element `(i, j) = src[i * rs + j * cs] * scale` into panels
/// of [`PANEL`] columns, `[panel][k][PANEL]`, zero padded; `dst` is reused.
///
/// Panics if the matrix reaches past `src`; callers pass views they have checked.
pub fn pack_panels(
    dst: &mut Vec<f32>,
    src: &[f32],
    (k, n): (usize, usize),
    (rs, cs): (usize, usize),
    scale: f32,
) {
    let panels = n.div_ceil(PANEL);
    dst.clear();
    dst.resize(panels * k * PANEL, 0.0);
    if k == 0 {
        return;
    }
    for (p, panel) in dst.chunks_exact_mut(k * PANEL).enumerate() {
        let c0 = p * PANEL;
        let cols = (n - c0).min(PANEL);
        if rs == 1 && cs != 1 {
            // A transposed source (attention's keys): read each column's contiguous run and
            // write it down the panel, rather than gathering one float per cache line.
            for j in 0..cols {
                let col = &src[(c0 + j) * cs..(c0 + j) * cs + k];
                for (i, &v) in col.iter().enumerate() {
                    panel[i * PANEL + j] = v * scale;
                }
            }
            continue;
        }
        for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            let base = i * rs + c0 * cs;
            if cs == 1 && scale == 1.0 {
                row[..cols].copy_from_slice(&src[base..base + cols]);
            } else {
                for (j, v) in row[..cols].iter_mut().enumerate() {
                    *v = src[base + j * cs] * scale;
                }
            }
        }
    }
}

/// `out[r, c] = sum_i x[r, i] P[i, c]` for `r < m`, `i < k` and the columns of panels `p0..p1`
/// (clipped to `n`), where `P` was packed by [`pack_panels`] with `pk >= k` rows per panel.
/// Rows of `x` and `out` are `xrs` and `ors` apart; their columns are contiguous. Unless `res`
/// is null, `res[r, c]` (laid out as `out`) is added to each stored value ([`Epilogue::Store`]
/// only).
///
/// # Safety
/// `x` must hold m rows of k, `out` (and a non-null `res`) m rows of the columns written,
/// `panels` the packed matrix; the CPU must have AVX-512F (see [`available`]).
pub unsafe fn panel_matmul(
    (x, xrs): (*const f32, usize),
    (m, k): (usize, usize),
    (panels, pk, n): (*const f32, usize, usize),
    (p0, p1): (usize, usize),
    (out, ors): (*mut f32, usize),
    epilogue: Epilogue,
    res: *const f32,
) {
    #[cfg(target_arch = "x86_64")]
    for p in p0..p1 {
        let per = epilogue.cols();
        let cols = (n - p * per).min(per);
        // SAFETY (all below): offsets stay within the buffers the caller vouches for.
        let w = unsafe { panels.add(p * pk * PANEL) };
        let o = unsafe { out.add(p * per) };
        let rs = if res.is_null() {
            res
        } else {
            unsafe { res.add(p * per) }
        };
        let at = |r: usize| {
            let res_r = if rs.is_null() {
                rs
            } else {
                unsafe { rs.add(r * ors) }
            };
            (unsafe { o.add(r * ors) }, ors, cols, res_r)
        };
        // A narrow last panel of stored columns (attention scores end mid-panel) runs only
        // the vectors it needs: causal scores would otherwise compute about a quarter more.
        let vectors = match epilogue {
            Epilogue::Store => cols.div_ceil(16),
            Epilogue::Gated(_) => 4,
        };
        unsafe {
            match vectors {
                1 => panel_rows::<1>(k, (x, xrs), m, w, &at, epilogue),
                2 => panel_rows::<2>(k, (x, xrs), m, w, &at, epilogue),
                3 => panel_rows::<3>(k, (x, xrs), m, w, &at, epilogue),
                _ => panel_rows::<4>(k, (x, xrs), m, w, &at, epilogue),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, xrs, m, k, panels, pk, n, p0, p1, out, ors, epilogue, res);
}

/// Every row of `x` through one panel, `V` column vectors wide, in register blocks of [`ROWS`]
/// rows; `at(r)` gives the output (and residual) of row `r`.
///
/// # Safety
/// As [`panel_matmul`], for this panel.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn panel_rows<const V: usize>(
    k: usize,
    (x, xrs): (*const f32, usize),
    m: usize,
    w: *const f32,
    at: &dyn Fn(usize) -> (*mut f32, usize, usize, *const f32),
    epilogue: Epilogue,
) {
    let mut r = 0;
    // SAFETY (all below): forwarded from the caller; rows r.. of x lie inside it.
    while r + ROWS <= m {
        unsafe { kernel::<ROWS, V>(k, (x.add(r * xrs), xrs), w, at(r), epilogue) };
        r += ROWS;
    }
    let (xr, or) = (unsafe { x.add(r * xrs) }, at(r));
    unsafe {
        match m - r {
            1 => kernel::<1, V>(k, (xr, xrs), w, or, epilogue),
            2 => kernel::<2, V>(k, (xr, xrs), w, or, epilogue),
            3 => kernel::<3, V>(k, (xr, xrs), w, or, epilogue),
            4 => kernel::<4, V>(k, (xr, xrs), w, or, epilogue),
            5 => kernel::<5, V>(k, (xr, xrs), w, or, epilogue),
            _ => {}
        }
    }
}

/// The machine's f32 FMA throughput on `threads` threads, in GFLOP/s: independent AVX-512 FMA
/// chains with no memory traffic, the ceiling any f32 matmul here can approach. The best of
/// three 0.1 s rounds; `None` without AVX-512.
pub fn fma_peak_gflops(threads: usize) -> Option<f64> {
    if !available() {
        return None;
    }
    let threads = threads.max(1);
    let iters = 4_000_000usize;
    let mut best = 0f64;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let sink: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(move || {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `available()` checked AVX-512F above.
                        return unsafe { fma_chains(iters) };
                        #[cfg(not(target_arch = "x86_64"))]
                        0.0
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        let secs = start.elapsed().as_secs_f64();
        // Twelve chains of 16 lanes, two flops per FMA.
        let flops = (threads * iters * 12 * 16 * 2) as f64;
        best = best.max(flops / secs / 1e9);
        std::hint::black_box(sink);
    }
    Some(best)
}

/// Twelve independent FMA chains, enough to cover the FMA latency on both pipes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for a in acc {
        sum = _mm512_add_ps(sum, a);
    }
    _mm512_reduce_add_ps(sum)
}

/// `R` rows of `x` (row stride `xrs`) times one packed panel of `k` rows, written to `out` (row
/// stride `n`) through the epilogue, the first `cols` output columns only, plus `res` (same
/// layout as `out`) unless it is null. Only the first `V` of the panel's four column vectors
/// are computed (`V` is 4 for [`Epilogue::Gated`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize>(
    k: usize,
    (x, xrs): (*const f32, usize),
    w: *const f32,
    (out, n, cols, res): (*mut f32, usize, usize, *const f32),
    epilogue: Epilogue,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut wp = w;
    for kk in 0..k {
        // SAFETY: the panel holds k rows of PANEL floats; x holds R rows of k.
        unsafe {
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, lane) in wv.iter_mut().enumerate() {
                *lane = _mm512_loadu_ps(wp.add(16 * v));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * xrs + kk));
                for (lane, &wl) in a.iter_mut().zip(&wv) {
                    *lane = _mm512_fmadd_ps(xv, wl, *lane);
                }
            }
            wp = wp.add(PANEL);
        }
    }
    if let (Epilogue::Gated(act), true) = (epilogue, V == 4) {
        // One activation call for the whole register block (the padding columns of a last
        // partial panel are zero products, harmless to activate): per-row calls were a
        // noticeable share of a gated MLP's time.
        const HALF: usize = PANEL / 2;
        let mut gate = [0f32; ROWS * HALF];
        let mut up = [0f32; ROWS * HALF];
        let mut act_out = [std::mem::MaybeUninit::<f32>::uninit(); ROWS * HALF];
        for (r, a) in acc.iter().enumerate() {
            // V is 4 here: gate, gate, up, up.
            let a = a.as_slice();
            // SAFETY: each buffer holds ROWS >= R rows of HALF floats.
            unsafe {
                _mm512_storeu_ps(gate.as_mut_ptr().add(r * HALF), a[0]);
                _mm512_storeu_ps(gate.as_mut_ptr().add(r * HALF + 16), a[1]);
                _mm512_storeu_ps(up.as_mut_ptr().add(r * HALF), a[2]);
                _mm512_storeu_ps(up.as_mut_ptr().add(r * HALF + 16), a[3]);
            }
        }
        act(&gate[..R * HALF], &up[..R * HALF], &mut act_out[..R * HALF]);
        for r in 0..R {
            // SAFETY: row r of the output has at least `cols` (<= HALF) columns from here, and
            // `act` wrote all R x HALF values of `act_out`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    act_out.as_ptr().add(r * HALF) as *const f32,
                    out.add(r * n),
                    cols,
                );
            }
        }
        return;
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row r of the output (and of a non-null residual) has at least `cols` columns
        // from here.
        unsafe {
            let o = out.add(r * n);
            for (v, &lane) in a.iter().enumerate() {
                let c0 = v * 16;
                if c0 >= cols {
                    break;
                }
                let rem = (cols - c0).min(16);
                let mask = if rem == 16 {
                    !0
                } else {
                    ((1u32 << rem) - 1) as __mmask16
                };
                let lane = if res.is_null() {
                    lane
                } else {
                    _mm512_add_ps(lane, _mm512_maskz_loadu_ps(mask, res.add(r * n + c0)))
                };
                if rem == 16 {
                    _mm512_storeu_ps(o.add(c0), lane);
                } else {
                    _mm512_mask_storeu_ps(o.add(c0), mask, lane);
                }
            }
        }
    }
}

/// `x @ W^T` (or the gated MLP activation) through the packed kernel, as a candle op for
/// inference.
pub struct PackedMatmul(pub std::sync::Arc<PackedWeight>);

impl candle_core::CustomOp1 for PackedMatmul {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed-matmul: expected f32 input");
        };
        let (m, k) = layout.shape().dims2()?;
        if k != self.0.k() {
            candle_core::bail!(
                "packed-matmul: input has {k} features, the weight expects {}",
                self.0.k()
            );
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed-matmul: input must be contiguous");
        };
        self.0.product_storage(&data[start..end], m, None)
    }
}

/// `residual + x @ W^T` through the packed kernel (the sum formed as each block is stored), as
/// a candle op for inference: `x.apply_op2_no_bwd(&residual, ..)`.
pub struct PackedMatmulAdd(pub std::sync::Arc<PackedWeight>);

impl candle_core::CustomOp2 for PackedMatmulAdd {
    fn name(&self) -> &'static str {
        "packed-matmul-add"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(x), candle_core::CpuStorage::F32(r)) = (s1, s2) else {
            candle_core::bail!("packed-matmul-add: expected f32 input and residual");
        };
        let (m, k) = l1.shape().dims2()?;
        let n = self.0.n();
        if k != self.0.k() || l2.shape().dims2()? != (m, n) {
            candle_core::bail!(
                "packed-matmul-add: input {:?} and residual {:?} for a {} x {n} weight",
                l1.dims(),
                l2.dims(),
                self.0.k()
            );
        }
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("packed-matmul-add: input and residual must be contiguous");
        };
        self.0.product_storage(&x[a..b], m, Some(&r[c..d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], wt: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for kk in 0..k {
                let xv = x[r * k + kk] as f64;
                for c in 0..n {
                    out[r * n + c] += xv * wt[kk * n + c] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_float64_reference_on_ragged_shapes() {
        if !available() {
            eprintln!("no AVX-512 here: the packed kernel is not used, nothing to check");
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 17),
            (6, 64, 64),
            (7, 65, 65),
            (13, 300, 130),
            (64, 512, 200),
            (2, 7, 1000),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0)
                .collect();
            let pw = PackedWeight::new(&wt, k, n).expect("packed");
            let mut out = crate::kernels::fastmath::uninit_buffer(m * n);
            pw.matmul(&x, m, &mut out).expect("shapes");
            // SAFETY: matmul writes every element of the m x n output.
            let out = unsafe { crate::kernels::fastmath::assume_init(out) };
            let want = reference(&x, &wt, m, k, n);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs() / (1.0 + b.abs()))
                .fold(0f64, f64::max);
            assert!(worst < 1e-5, "m{m} k{k} n{n}: relative error {worst:e}");
        }
    }
    #[test]
    fn gated_epilogue_matches_a_float64_reference() {
        if !available() {
            eprintln!("no AVX-512 here: the packed kernel is not used, nothing to check");
            return;
        }
        for &(m, k, n) in &[(1, 1, 1), (7, 33, 31), (13, 64, 32), (6, 100, 75)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let gate: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0)
                .collect();
            let up: Vec<f32> = (0..k * n)
                .map(|i| ((i * 15_485_863) % 89) as f32 / 44.0 - 1.0)
                .collect();
            let pw = PackedWeight::new_gated(&gate, &up, k, n, crate::kernels::fastmath::silu_mul)
                .expect("packed");
            let mut out = crate::kernels::fastmath::uninit_buffer(m * n);
            pw.matmul(&x, m, &mut out).expect("shapes");
            // SAFETY: matmul writes every element of the m x n output.
            let out = unsafe { crate::kernels::fastmath::assume_init(out) };
            let (g, u) = (reference(&x, &gate, m, k, n), reference(&x, &up, m, k, n));
            for (i, &o) in out.iter().enumerate() {
                let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                let err = (o as f64 - want).abs() / (1.0 + want.abs());
                assert!(err < 1e-5, "m{m} k{k} n{n} element {i}: {o} vs {want}");
            }
        }
    }
}
