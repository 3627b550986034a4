//! CPU kernels for the encoder: GEMM (through the `gemm` crate), layer norm, exact (erf) GELU, softmax and the
//! attention of packed rows that the BERT, MPNet, ModernBERT and Gemma forward passes share.
//!
//! The element-wise kernels are written as plain loops over fixed-width lanes so that LLVM vectorizes them;
//! on x86_64 each one is also compiled for AVX-512 and for AVX2+FMA, and the widest the CPU has is picked at
//! run time (the default target only assumes SSE2). Results are float32 and follow the reference formulas: `exp` and `erf` are polynomial
//! approximations with errors below 2e-7 (relative) and 1.5e-7 (absolute), far inside the parity budget.
//!
//! The optional faster modes have packed weight types of their own: [`Bf16Weights`] (AVX512_BF16) and
//! [`Int8Weights`] (AVX512-VNNI, with per-row activation quantization); each says how it rounds.

/// Lanes of the accumulators in reductions (two AVX2 registers); sums are split this way so they vectorize.
const LANES: usize = 16;

/// `out (m x n) = x (m x k) * wt (k x n) + bias (n)`, all row-major and contiguous, on the calling thread.
pub fn matmul_bias(x: &[f32], wt: &[f32], bias: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() >= m * k && wt.len() == k * n && bias.len() == n && out.len() >= m * n, "matmul_bias: shapes (this is a bug)");
    for row in out[..m * n].chunks_exact_mut(n) {
        row.copy_from_slice(bias);
    }
    // SAFETY: the asserts above keep every access of an m x k, k x n and m x n row-major matrix in bounds.
    unsafe { gemm_raw(m, n, k, x.as_ptr(), k as isize, 1, wt.as_ptr(), n as isize, 1, out.as_mut_ptr(), n as isize, 1, true, 1.0) }
}

/// `dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n)` with arbitrary row/column strides.
///
/// # Safety
/// Every element addressed by the sizes and strides must lie inside the matching allocation, and `dst`
/// must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    scale: f32,
) {
    // gemm computes dst = alpha * dst + beta * lhs * rhs (alpha is read only when `read_dst`).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Declares `pub fn $name` that runs `$body` compiled for AVX2+FMA when the CPU has it, else for the
/// default target. `$body` is a function item with the same arguments.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

dispatch! {
    /// Each row of `x` (rows of `gamma.len()`) becomes `LayerNorm(x + residual)`; `residual` has x's shape.
    pub fn add_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) => add_layer_norm_body
}

dispatch! {
    /// Each row of `x` (rows of `gamma.len()`) becomes `LayerNorm(x)`.
    pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_body
}

dispatch! {
    /// `x = x * 0.5 * (1 + erf(x / sqrt(2)))`: the exact GELU of BERT's "gelu" activation.
    pub fn gelu_erf(x: &mut [f32]) => gelu_erf_body
}

dispatch! {
    /// Softmax of each row of `x` (rows of `n`), in place.
    pub fn softmax_rows(x: &mut [f32], n: usize) => softmax_rows_body
}

/// Softmax of each row of the `n x n` scores `s` in place; with `half_window`, a row's softmax runs over the
/// keys at most that far from its query (a sliding-window layer) and the others get weight 0.
pub fn softmax_band(s: &mut [f32], n: usize, half_window: Option<usize>) {
    match half_window {
        Some(w) if n > w + 1 => {
            for (r, row) in s.chunks_exact_mut(n).enumerate() {
                let (lo, hi) = (r.saturating_sub(w), (r + w + 1).min(n));
                softmax_rows(&mut row[lo..hi], hi - lo);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
            }
        }
        _ => softmax_rows(s, n),
    }
}

/// How each token's row of a fused projection holds its queries, keys and values: `heads` query heads, then
/// `kv_heads` key heads, then `kv_heads` value heads, each `head_dim` wide. Query head `i` reads key/value head
/// `i / (heads / kv_heads)` (grouped-query attention when `kv_heads < heads`).
#[derive(Clone, Copy, Debug)]
pub struct QkvLayout {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl QkvLayout {
    /// Floats per token in the fused projection.
    pub fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Scaled dot-product attention of packed rows: `lengths` rows of tokens lie one after another in `qkv`
/// (tokens x `layout.width()`), and each query head of a row attends over that row's tokens only. For each row
/// and head, `adjust(head, scores, n)` may change the n x n scores (a relative position bias, a soft cap)
/// before the softmax, which runs over keys at most `half_window` away when one is given (the others get
/// weight 0). Writes `ctx` (tokens x `heads * head_dim`); `scores` is scratch of at least the longest row squared.
#[allow(clippy::too_many_arguments)]
pub fn packed_attention(
    qkv: &[f32],
    layout: QkvLayout,
    lengths: &[u32],
    scale: f32,
    half_window: Option<usize>,
    ctx: &mut [f32],
    scores: &mut [f32],
    mut adjust: impl FnMut(usize, &mut [f32], usize),
) {
    let QkvLayout { heads, kv_heads, head_dim: hd } = layout;
    let (width, out_width) = (layout.width(), heads * hd);
    let tokens: usize = lengths.iter().map(|&n| n as usize).sum();
    let longest = lengths.iter().map(|&n| n as usize).max().unwrap_or(0);
    assert!(
        kv_heads > 0 && heads % kv_heads == 0 && qkv.len() >= tokens * width && ctx.len() >= tokens * out_width && scores.len() >= longest * longest,
        "packed_attention: shapes (this is a bug)"
    );
    let group = heads / kv_heads;
    let stride = width as isize;
    let mut at = 0;
    for &n in lengths {
        let n = n as usize;
        for head in 0..heads {
            let q = qkv[at * width + head * hd..].as_ptr();
            let k = qkv[at * width + (heads + head / group) * hd..].as_ptr();
            let v = qkv[at * width + (heads + kv_heads + head / group) * hd..].as_ptr();
            let s = &mut scores[..n * n];
            // SAFETY: the assert above puts rows at..at+n of qkv (`width` wide) and of ctx (`out_width` wide) in
            // bounds; each head's columns stay within its part of the row; `s` is n x n and apart from both.
            // s = scale * q k^T: k^T as a (head_dim x n) matrix is k with row stride 1 and column stride `width`.
            unsafe {
                gemm_raw(n, n, hd, q, stride, 1, k, 1, stride, s.as_mut_ptr(), n as isize, 1, false, scale);
            }
            adjust(head, s, n);
            softmax_band(s, n, half_window);
            let out = ctx[at * out_width + head * hd..].as_mut_ptr();
            // SAFETY: as above.
            unsafe {
                gemm_raw(n, hd, n, s.as_ptr(), n as isize, 1, v, stride, 1, out, out_width as isize, 1, false, 1.0);
            }
        }
        at += n;
    }
}

dispatch! {
    /// `acc += x`, element-wise.
    pub fn add_assign(acc: &mut [f32], x: &[f32]) => add_assign_body
}

#[inline(always)]
fn add_assign_body(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The Euclidean norm of `x` (accumulated in lanes, so it vectorizes).
pub fn norm(x: &[f32]) -> f32 {
    sum_sq_dev(x, 0.0).sqrt()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |a, &v| a.max(v))
}

#[inline(always)]
fn normalize_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let var = sum_sq_dev(row, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

#[inline(always)]
fn add_layer_norm_body(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    for (row, res) in x.chunks_exact_mut(h).zip(residual.chunks_exact(h)) {
        for (v, r) in row.iter_mut().zip(res) {
            *v += r;
        }
        normalize_row(row, gamma, beta, eps);
    }
}

#[inline(always)]
fn layer_norm_body(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(gamma.len()) {
        normalize_row(row, gamma, beta, eps);
    }
}

/// e^x for x in the f32 range (Cephes' expf polynomial, relative error < 2e-7); branch-free so it vectorizes.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_66) * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n through the exponent bits; n is within [-126, 128] after the clamp.
    let bits = ((n as i32 + 127).clamp(0, 255) as u32) << 23;
    p * f32::from_bits(bits)
}

/// erf(x) (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_erf_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn softmax_rows_body(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        let m = max(row);
        for v in row.iter_mut() {
            *v = exp(*v - m);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Round-to-nearest-even float32 -> bfloat16 (the upper 16 bits of a float32).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Whether this CPU runs [`Bf16Weights::matmul_bias`] (AVX-512F with AVX512_BF16).
pub fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `k x n` weight matrix rounded to bfloat16 and packed for the AVX512_BF16 dot product: panels of
/// [`BF16_NR`] columns, and within a panel, for each pair of rows `(2q, 2q+1)`, one `u32` per column holding
/// both values (low half row `2q`), as `vdpbf16ps` pairs them.
pub struct Bf16Weights {
    pairs: Vec<u32>,
    k: usize,
    n: usize,
}

/// Columns per panel: two 16-lane registers.
pub const BF16_NR: usize = 32;

impl Bf16Weights {
    /// Packs `wt` (`k x n`, row-major). `None` when `n` is not a multiple of [`BF16_NR`].
    pub fn pack(wt: &[f32], k: usize, n: usize) -> Option<Bf16Weights> {
        if !n.is_multiple_of(BF16_NR) || wt.len() != k * n {
            return None;
        }
        let kp = k.div_ceil(2);
        let mut pairs = vec![0u32; kp * n];
        for panel in 0..n / BF16_NR {
            for q in 0..kp {
                for lane in 0..BF16_NR {
                    let j = panel * BF16_NR + lane;
                    let lo = to_bf16(wt[2 * q * n + j]) as u32;
                    let hi = if 2 * q + 1 < k { to_bf16(wt[(2 * q + 1) * n + j]) as u32 } else { 0 };
                    pairs[(panel * kp + q) * BF16_NR + lane] = lo | (hi << 16);
                }
            }
        }
        Some(Bf16Weights { pairs, k, n })
    }

    /// `out (m x n) = x (m x k) * W + bias` with x rounded to bfloat16 and float32 accumulation.
    ///
    /// Panics if the CPU lacks AVX512_BF16 (callers check [`has_bf16_dot`] when choosing this path).
    pub fn matmul_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32], m: usize) {
        let (k, n) = (self.k, self.n);
        assert!(x.len() >= m * k && bias.len() == n && out.len() >= m * n, "bf16 matmul_bias: shapes (this is a bug)");
        assert!(has_bf16_dot(), "bf16 matmul on a CPU without AVX512_BF16 (this is a bug)");
        let kp = k.div_ceil(2);
        // Activations as bf16 pairs along k, row-major (m x kp).
        let mut a = vec![0u32; m * kp];
        for (row, src) in a.chunks_exact_mut(kp).zip(x.chunks_exact(k)) {
            for (q, v) in row.iter_mut().enumerate() {
                let lo = to_bf16(src[2 * q]) as u32;
                let hi = if 2 * q + 1 < k { to_bf16(src[2 * q + 1]) as u32 } else { 0 };
                *v = lo | (hi << 16);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features (asserted above); shapes were checked above.
        unsafe {
            bf16_gemm(&a, kp, &self.pairs, n, bias, out, m)
        }
    }
}

/// Rows per micro-tile; with two column registers that is 16 accumulators.
#[cfg(target_arch = "x86_64")]
const BF16_MR: usize = 8;
/// Rows per cache block: their bf16 activations stay in L1/L2 while every panel passes over them.
#[cfg(target_arch = "x86_64")]
const BF16_MC: usize = 96;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_gemm(a: &[u32], kp: usize, b: &[u32], n: usize, bias: &[f32], c: &mut [f32], m: usize) {
    use std::arch::x86_64::*;
    for i0 in (0..m).step_by(BF16_MC) {
        let i1 = (i0 + BF16_MC).min(m);
        for panel in 0..n / BF16_NR {
            let j = panel * BF16_NR;
            let bp = b.as_ptr().add(panel * kp * BF16_NR);
            let mut i = i0;
            while i < i1 {
                let rows = (i1 - i).min(BF16_MR);
                let bias0 = _mm512_loadu_ps(bias.as_ptr().add(j));
                let bias1 = _mm512_loadu_ps(bias.as_ptr().add(j + 16));
                let mut acc = [[bias0, bias1]; BF16_MR];
                // Rows past the end repeat the last row (computed, never stored).
                let mut ap = [a.as_ptr(); BF16_MR];
                for (r, p) in ap.iter_mut().enumerate() {
                    *p = a.as_ptr().add((i + r.min(rows - 1)) * kp);
                }
                for q in 0..kp {
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * BF16_NR) as *const _));
                    let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * BF16_NR + 16) as *const _));
                    for r in 0..BF16_MR {
                        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap[r].add(q) as i32));
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
                    }
                }
                for (r, pair) in acc.iter().enumerate().take(rows) {
                    let dst = c.as_mut_ptr().add((i + r) * n + j);
                    _mm512_storeu_ps(dst, pair[0]);
                    _mm512_storeu_ps(dst.add(16), pair[1]);
                }
                i += BF16_MR;
            }
        }
    }
}

/// Whether this CPU runs [`Int8Weights::matmul_bias`] (AVX-512F with AVX512-VNNI).
pub fn has_int8_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `k x n` weight matrix quantized to int8 with one scale per output column (symmetric:
/// `w ~ scale[j] * q`, `q` in -127..=127), packed for the AVX512-VNNI dot product `vpdpbusd`: panels of
/// [`INT8_NR`] columns, and within a panel, for each group of four rows `4q..4q+4`, one `u32` per column
/// holding the four int8 values (lowest byte row `4q`).
pub struct Int8Weights {
    quads: Vec<u32>,
    scale: Vec<f32>,
    /// `sum_k q[k][j]`: activations are unsigned bytes `u = x / s + z`, and `z * colsum[j]` takes the zero
    /// point `z` back out of the dot product.
    colsum: Vec<i32>,
    /// Per input channel, `1 / smooth[c]` (see [`Int8Weights::pack_smoothed`]); empty when all are 1.
    inv_smooth: Vec<f32>,
    k: usize,
    n: usize,
}

/// Columns per panel: two 16-lane registers.
pub const INT8_NR: usize = 32;

/// Symmetric int8 quantization of `v` with scale `inv` (1 / scale).
#[inline(always)]
fn quantize(v: f32, inv: f32) -> i32 {
    (v * inv).round().clamp(-127.0, 127.0) as i32
}

impl Int8Weights {
    /// Quantizes and packs `wt` (`k x n`, row-major). `None` when `n` is not a multiple of [`INT8_NR`].
    pub fn pack(wt: &[f32], k: usize, n: usize) -> Option<Int8Weights> {
        Self::pack_smoothed(wt, k, n, &[])
    }

    /// As [`Int8Weights::pack`], with row `c` of the weights multiplied by `smooth[c]` and, at run time,
    /// input channel `c` divided by it (the product is unchanged; the split of the range between weights
    /// and activations is). An empty `smooth` means all ones.
    pub fn pack_smoothed(wt: &[f32], k: usize, n: usize, smooth: &[f32]) -> Option<Int8Weights> {
        if !n.is_multiple_of(INT8_NR) || wt.len() != k * n || !(smooth.is_empty() || smooth.len() == k) {
            return None;
        }
        let smoothed: Vec<f32>;
        let wt = if smooth.is_empty() || smooth.iter().all(|s| *s == 1.0) {
            wt
        } else {
            smoothed = wt.chunks_exact(n).zip(smooth).flat_map(|(row, s)| row.iter().map(move |w| w * s)).collect();
            &smoothed
        };
        let inv_smooth: Vec<f32> = if smooth.iter().all(|s| *s == 1.0) { Vec::new() } else { smooth.iter().map(|s| 1.0 / s).collect() };
        let mut scale = vec![0f32; n];
        for (j, s) in scale.iter_mut().enumerate() {
            let amax = (0..k).map(|l| wt[l * n + j].abs()).fold(0f32, f32::max);
            *s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        }
        let kq = k.div_ceil(4);
        let mut quads = vec![0u32; kq * n];
        let mut colsum = vec![0i32; n];
        for panel in 0..n / INT8_NR {
            for q in 0..kq {
                for lane in 0..INT8_NR {
                    let j = panel * INT8_NR + lane;
                    let mut word = 0u32;
                    for b in 0..4 {
                        let l = 4 * q + b;
                        let v = if l < k { quantize(wt[l * n + j], 1.0 / scale[j]) } else { 0 };
                        colsum[j] += v;
                        word |= ((v as i8 as u8) as u32) << (8 * b);
                    }
                    quads[(panel * kq + q) * INT8_NR + lane] = word;
                }
            }
        }
        Some(Int8Weights { quads, scale, colsum, inv_smooth, k, n })
    }

    /// `out (m x n) = x (m x k) * W + bias`, with each row of `x` quantized to unsigned 8 bits over its own
    /// range (scale and zero point: `x ~ s * (u - z)`), int32 accumulation, and the result scaled back to
    /// float32.
    ///
    /// Panics if the CPU lacks AVX512-VNNI (callers check [`has_int8_dot`] when choosing this path).
    pub fn matmul_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32], m: usize) {
        let (k, n) = (self.k, self.n);
        assert!(x.len() >= m * k && bias.len() == n && out.len() >= m * n, "int8 matmul_bias: shapes (this is a bug)");
        assert!(has_int8_dot(), "int8 matmul on a CPU without AVX512-VNNI (this is a bug)");
        let kq = k.div_ceil(4);
        // Activations as unsigned bytes, four per u32 along k (byte l of a row is its element l); padding is
        // the zero point (a zero).
        let mut a = vec![0u32; m * kq];
        let mut row_scale = vec![0f32; m];
        let mut zero = vec![0i32; m];
        let mut smoothed = vec![0f32; if self.inv_smooth.is_empty() { 0 } else { k }];
        for (i, (row, src)) in a.chunks_exact_mut(kq).zip(x.chunks_exact(k)).enumerate() {
            let src = if smoothed.is_empty() {
                src
            } else {
                for ((o, v), inv) in smoothed.iter_mut().zip(src).zip(&self.inv_smooth) {
                    *o = v * inv;
                }
                &smoothed[..]
            };
            let (s, z) = affine_u8(src);
            row_scale[i] = s;
            zero[i] = z;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (asserted above); `row` holds 4 * kq >= k bytes.
            unsafe {
                quantize_u8(src, 1.0 / s, z, row)
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features (asserted above); shapes were checked above.
        unsafe {
            int8_gemm(&a, kq, &row_scale, &zero, self, bias, out, m)
        }
    }
}

/// Scale and zero point that map the range of `x` (widened to include 0) onto 0..=255: `x ~ s * (u - z)`.
fn affine_u8(x: &[f32]) -> (f32, i32) {
    let (lo, hi) = min_max(x);
    if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        return (1.0, 0);
    }
    let s = (hi - lo) / 255.0;
    (s, ((-lo / s).round() as i32).clamp(0, 255))
}

dispatch! {
    /// The smallest and largest of `x` and 0.
    pub fn min_max(x: &[f32]) -> (f32, f32) => min_max_body
}

#[inline(always)]
fn min_max_body(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold((0f32, 0f32), |(l, h), v| (l.min(*v), h.max(*v)));
    for c in chunks {
        for i in 0..LANES {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    (lo.iter().fold(tail.0, |a, v| a.min(*v)), hi.iter().fold(tail.1, |a, v| a.max(*v)))
}

/// Writes `clamp(round_half_even(x * inv) + z, 0, 255)` for each element of `x` as bytes into `dst` (byte l
/// is element l), and `z` into the bytes past `x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_u8(x: &[f32], inv: f32, z: i32, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let bytes = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len() * 4);
    assert!(bytes.len() >= x.len(), "quantize_u8: destination too small (this is a bug)");
    let (vinv, vz, lo, hi) = (_mm512_set1_ps(inv), _mm512_set1_epi32(z), _mm512_setzero_si512(), _mm512_set1_epi32(255));
    let full = x.len() / 16 * 16;
    for l in (0..full).step_by(16) {
        // Round to nearest even (the default rounding mode), shift by the zero point, clamp, narrow.
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(l)), vinv));
        let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, vz), lo), hi);
        _mm_storeu_si128(bytes.as_mut_ptr().add(l) as *mut __m128i, _mm512_cvtepi32_epi8(q));
    }
    for l in full..x.len() {
        bytes[l] = ((x[l] * inv).round_ties_even() as i32 + z).clamp(0, 255) as u8;
    }
    bytes[x.len()..].fill(z as u8);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn int8_gemm(a: &[u32], kq: usize, row_scale: &[f32], zero: &[i32], w: &Int8Weights, bias: &[f32], c: &mut [f32], m: usize) {
    use std::arch::x86_64::*;
    let n = w.n;
    for i0 in (0..m).step_by(BF16_MC) {
        let i1 = (i0 + BF16_MC).min(m);
        for panel in 0..n / INT8_NR {
            let j = panel * INT8_NR;
            let bp = w.quads.as_ptr().add(panel * kq * INT8_NR);
            let cs0 = _mm512_loadu_si512(w.colsum.as_ptr().add(j) as *const _);
            let cs1 = _mm512_loadu_si512(w.colsum.as_ptr().add(j + 16) as *const _);
            let ws0 = _mm512_loadu_ps(w.scale.as_ptr().add(j));
            let ws1 = _mm512_loadu_ps(w.scale.as_ptr().add(j + 16));
            let bias0 = _mm512_loadu_ps(bias.as_ptr().add(j));
            let bias1 = _mm512_loadu_ps(bias.as_ptr().add(j + 16));
            let mut i = i0;
            while i < i1 {
                let rows = (i1 - i).min(BF16_MR);
                let mut acc = [[_mm512_setzero_si512(); 2]; BF16_MR];
                // Rows past the end repeat the last row (computed, never stored).
                let mut ap = [a.as_ptr(); BF16_MR];
                for (r, p) in ap.iter_mut().enumerate() {
                    *p = a.as_ptr().add((i + r.min(rows - 1)) * kq);
                }
                for q in 0..kq {
                    let b0 = _mm512_loadu_si512(bp.add(q * INT8_NR) as *const _);
                    let b1 = _mm512_loadu_si512(bp.add(q * INT8_NR + 16) as *const _);
                    for r in 0..BF16_MR {
                        let av = _mm512_set1_epi32(*ap[r].add(q) as i32);
                        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
                        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
                    }
                }
                for (r, pair) in acc.iter().enumerate().take(rows) {
                    let rs = _mm512_set1_ps(row_scale[i + r]);
                    let z = _mm512_set1_epi32(zero[i + r]);
                    let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(pair[0], _mm512_mullo_epi32(z, cs0)));
                    let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(pair[1], _mm512_mullo_epi32(z, cs1)));
                    let dst = c.as_mut_ptr().add((i + r) * n + j);
                    _mm512_storeu_ps(dst, _mm512_fmadd_ps(v0, _mm512_mul_ps(rs, ws0), bias0));
                    _mm512_storeu_ps(dst.add(16), _mm512_fmadd_ps(v1, _mm512_mul_ps(rs, ws1), bias1));
                }
                i += BF16_MR;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_attention_matches_the_formula_per_row_and_head() {
        // Two packed rows (3 and 5 tokens), 4 query heads over 2 key/value heads of 3 dims, a window of 1 and
        // an adjustment per head, against the textbook formula computed one row and head at a time.
        let layout = QkvLayout { heads: 4, kv_heads: 2, head_dim: 3 };
        let (lengths, width, hd) = ([3u32, 5], layout.width(), 3);
        let qkv: Vec<f32> = (0..8 * width).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let bump = |head: usize, r: usize, c: usize| 0.1 * head as f32 - 0.05 * (r as f32 - c as f32).abs();
        for window in [None, Some(1)] {
            let mut ctx = vec![f32::NAN; 8 * 12];
            let mut scores = vec![0f32; 25];
            packed_attention(&qkv, layout, &lengths, 0.5, window, &mut ctx, &mut scores, |head, s, n| {
                for (i, x) in s.iter_mut().enumerate() {
                    *x += bump(head, i / n, i % n);
                }
            });
            let mut at = 0;
            for n in lengths.map(|n| n as usize) {
                for head in 0..4 {
                    let kv = head / 2;
                    for r in 0..n {
                        let tok = |t: usize, part: usize| &qkv[(at + t) * width + part * hd..(at + t) * width + part * hd + hd];
                        let keys: Vec<usize> = (0..n).filter(|&c| window.is_none_or(|w| r.abs_diff(c) <= w)).collect();
                        let logits: Vec<f32> = keys
                            .iter()
                            .map(|&c| 0.5 * tok(r, head).iter().zip(tok(c, 4 + kv)).map(|(a, b)| a * b).sum::<f32>() + bump(head, r, c))
                            .collect();
                        let top = logits.iter().cloned().fold(f32::MIN, f32::max);
                        let total: f32 = logits.iter().map(|l| (l - top).exp()).sum();
                        for j in 0..hd {
                            let want: f32 = keys.iter().zip(&logits).map(|(&c, l)| (l - top).exp() / total * tok(c, 6 + kv)[j]).sum();
                            let got = ctx[(at + r) * 12 + head * hd + j];
                            assert!((got - want).abs() < 1e-5, "window {window:?} row at {at} head {head} token {r} dim {j}: {got} vs {want}");
                        }
                    }
                }
                at += n;
            }
        }
    }

    #[test]
    fn banded_softmax_spreads_over_the_window_only() {
        // 4 x 4 zero scores: a full softmax gives 1/4 each; a window of one gives 1/2 or 1/3 within it.
        let mut full = vec![0f32; 16];
        softmax_band(&mut full, 4, None);
        assert!(full.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        let mut band = vec![0f32; 16];
        softmax_band(&mut band, 4, Some(1));
        let third = 1.0 / 3.0;
        let want = [0.5, 0.5, 0.0, 0.0, third, third, third, 0.0, 0.0, third, third, third, 0.0, 0.0, 0.5, 0.5];
        assert!(band.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{band:?}");
        // A window that covers the row is a full softmax.
        let mut wide = vec![0f32; 16];
        softmax_band(&mut wide, 4, Some(3));
        assert_eq!(wide, full);
    }

    #[test]
    fn norm_matches_a_plain_sum_of_squares() {
        let x: Vec<f32> = (0..389).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let plain = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
        assert!((norm(&x) as f64 - plain).abs() < 1e-5 * plain);
        assert_eq!(norm(&[]), 0.0);
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }

    fn erf_ref(x: f64) -> f64 {
        // Series/continued fraction free reference: integrate e^{-t^2} with Simpson's rule (fine steps).
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 4e-7, "exp({x}): rel error {rel}");
        }
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
        for i in -600..=600 {
            let x = i as f32 * 0.01;
            let err = (erf(x) as f64 - erf_ref(x as f64)).abs();
            assert!(err < 3e-7, "erf({x}): error {err}");
        }
    }

    #[test]
    fn gelu_matches_the_formula() {
        let mut x: Vec<f32> = (-100..100).map(|i| i as f32 * 0.07).collect();
        let want: Vec<f64> = x.iter().map(|&v| 0.5 * v as f64 * (1.0 + erf_ref(v as f64 / 2f64.sqrt()))).collect();
        gelu_erf(&mut x);
        for (g, w) in x.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn layer_norm_and_softmax_match_naive_versions() {
        let h = 37; // not a multiple of the lanes: exercises the tails
        let x: Vec<f32> = (0..3 * h).map(|i| ((i * 7919) % 101) as f32 * 0.1 - 5.0).collect();
        let res: Vec<f32> = (0..3 * h).map(|i| (i % 5) as f32).collect();
        let gamma: Vec<f32> = (0..h).map(|i| 1.0 + i as f32 * 0.01).collect();
        let beta: Vec<f32> = (0..h).map(|i| i as f32 * -0.02).collect();
        let mut got = x.clone();
        add_layer_norm(&mut got, &res, &gamma, &beta, 1e-12);
        for r in 0..3 {
            let row: Vec<f64> = (0..h).map(|i| (x[r * h + i] + res[r * h + i]) as f64).collect();
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            for i in 0..h {
                let want = (row[i] - mean) / (var + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((got[r * h + i] as f64 - want).abs() < 1e-5, "row {r} col {i}");
            }
        }
        let mut s = x.clone();
        softmax_rows(&mut s, h);
        for r in 0..3 {
            let row = &x[r * h..(r + 1) * h];
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for i in 0..h {
                assert!((s[r * h + i] as f64 - (row[i] as f64 - m).exp() / z).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn matmul_bias_matches_a_naive_product() {
        let (m, k, n) = (5, 19, 7);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let wt: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = vec![f32::NAN; m * n];
        matmul_bias(&x, &wt, &bias, &mut out, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = bias[j] + (0..k).map(|l| x[i * k + l] * wt[l * n + j]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-4, "({i},{j}) {} vs {want}", out[i * n + j]);
            }
        }
    }

    #[test]
    fn bf16_matmul_matches_the_product_of_rounded_inputs() {
        if !has_bf16_dot() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let bf = |v: f32| f32::from_bits((to_bf16(v) as u32) << 16);
        assert_eq!(bf(1.0), 1.0);
        assert_eq!(bf(1.0 + 1.0 / 256.0), 1.0); // a tie rounds to even
        for (m, k, n) in [(1, 1, 32), (13, 37, 64), (100, 384, 96)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 199) as f32 * 0.01 - 1.0).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 211) as f32 * 0.003 - 0.3).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let w = Bf16Weights::pack(&wt, k, n).expect("n is a multiple of 32");
            let mut out = vec![f32::NAN; m * n];
            w.matmul_bias(&x, &bias, &mut out, m);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = bias[j] as f64 + (0..k).map(|l| bf(x[i * k + l]) as f64 * bf(wt[l * n + j]) as f64).sum::<f64>();
                    assert!(
                        (out[i * n + j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "({m},{k},{n}) at ({i},{j}): {} vs {want}",
                        out[i * n + j]
                    );
                }
            }
        }
        assert!(Bf16Weights::pack(&[0.0; 10], 1, 10).is_none());
    }

    #[test]
    fn int8_matmul_matches_the_product_of_quantized_inputs() {
        if !has_int8_dot() {
            eprintln!("skipped: this CPU has no AVX512-VNNI");
            return;
        }
        for (m, k, n) in [(1, 1, 32), (13, 37, 64), (100, 384, 96), (9, 1536, 32)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 199) as f32 * 0.01 - 1.0).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 211) as f32 * 0.003 - 0.3).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let w = Int8Weights::pack(&wt, k, n).expect("n is a multiple of 32");
            let mut out = vec![f32::NAN; m * n];
            w.matmul_bias(&x, &bias, &mut out, m);
            // The same quantization (scales per weight column, scale and zero point per activation row), then
            // an exact dot.
            let wscale: Vec<f32> = (0..n).map(|j| (0..k).map(|l| wt[l * n + j].abs()).fold(0f32, f32::max) / 127.0).collect();
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let (xs, z) = affine_u8(row);
                for j in 0..n {
                    let u = |v: f32| (((v * (1.0 / xs)).round_ties_even() as i32 + z).clamp(0, 255) - z) as i64;
                    let dot: i64 = (0..k).map(|l| u(row[l]) * quantize(wt[l * n + j], 1.0 / wscale[j]) as i64).sum();
                    let want = bias[j] as f64 + dot as f64 * xs as f64 * wscale[j] as f64;
                    let exact: f64 = bias[j] as f64 + (0..k).map(|l| row[l] as f64 * wt[l * n + j] as f64).sum::<f64>();
                    let got = out[i * n + j] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "({m},{k},{n}) at ({i},{j}): {got} vs {want}");
                    // And close to the float product: int8 keeps about two significant digits per term.
                    let bound = 0.02 * (k as f64).sqrt() * (1.0 + exact.abs());
                    assert!((got - exact).abs() < bound, "({m},{k},{n}) at ({i},{j}): {got} vs exact {exact}");
                }
            }
        }
        // Smoothing moves range from the activations into the weights: same product, and a large input
        // channel no longer flattens the others.
        let (m, k, n) = (5, 64, 32);
        let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 199) as f32 * 0.01 - 1.0).collect();
        for row in x.chunks_exact_mut(k) {
            row[3] *= 60.0; // an outlier channel
        }
        let wt: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 211) as f32 * 0.003 - 0.3).collect();
        let exact: Vec<f64> = (0..m * n).map(|ij| (0..k).map(|l| x[ij / n * k + l] as f64 * wt[l * n + ij % n] as f64).sum()).collect();
        let smooth: Vec<f32> = (0..k).map(|c| if c == 3 { 60f32.sqrt() } else { 1.0 }).collect();
        let err = |w: &Int8Weights| {
            let mut out = vec![0f32; m * n];
            w.matmul_bias(&x, &[0.0; 32], &mut out, m);
            out.iter().zip(&exact).map(|(o, e)| (*o as f64 - e).abs()).fold(0f64, f64::max)
        };
        let (plain, smoothed) = (err(&Int8Weights::pack(&wt, k, n).unwrap()), err(&Int8Weights::pack_smoothed(&wt, k, n, &smooth).unwrap()));
        assert!(smoothed < plain / 2.0, "smoothing: max error {smoothed} vs {plain} without");
        assert!(Int8Weights::pack_smoothed(&wt, k, n, &[1.0; 3]).is_none(), "one factor per input channel");
        // A zero row and a zero column quantize without dividing by zero.
        let w = Int8Weights::pack(&[0.0; 32], 1, 32).unwrap();
        let mut out = vec![f32::NAN; 32];
        w.matmul_bias(&[0.0], &[1.0; 32], &mut out, 1);
        assert!(out.iter().all(|v| *v == 1.0));
        assert!(Int8Weights::pack(&[0.0; 10], 1, 10).is_none());
    }
}
