// Fused, memory-bounded task-aligned assignment (TAL) for YOLOv10: CPU implementation, op schema and the
// stub Python module that makes `import yolov10_kernels._C` register the ops.
//
// Semantics: exactly those of yolov10.assign.TaskAlignedAssigner (= ultralytics 8.3.253
// utils/tal.py TaskAlignedAssigner), for M > 0 (the Python wrapper handles M == 0):
//   in(m,a)   = min(ax - x1, ay - y1, x2 - ax, y2 - ay) > 1e-9      (anchor strictly inside the gt)
//   pair(m,a) = in(m,a) && mask_gt(m)
//   ov(m,a)   = pair ? clamp(CIoU(gt_m, pd_a), 0) : 0
//   am(m,a)   = pair ? score(a, label_m)^alpha * ov^beta : 0
//   topk over all A anchors of am(m, .) per gt (torch.topk; padded gts get nothing),
//   pos(m,a)  = a in topk(m) && pair(m,a)
//   anchors claimed by >= 2 gts go to argmax_m ov(m,a) over ALL gts (first max; may be a gt that did not
//   claim the anchor, or gt 0 if every overlap is 0), target_gt_idx = that gt (0 for background),
//   target_scores[a, label] = am(w,a) * max_pos ov(w,.) / (max_pos am(w,.) + eps).
// Nothing of shape (B, M, A) is materialised: per (image, gt) only the anchors inside the gt are visited
// (found through an anchor index sorted by (y, x)), their CIoU and metric are computed and a top-k is
// selected; extra memory is O(B*A + B*M*k + threads*A).
//
// Bit parity with the float32 reference on the CPU: every elementwise op is done in float32 in the
// reference's order (no FMA contraction), atan goes through MKL VML in HA mode and pow through SLEEF
// exactly as ATen's CPU kernels do (resolved at run time from libtorch_cpu, std:: fallbacks otherwise),
// and the top-k replays libstdc++'s partial_sort / nth_element as ATen's topk_impl_loop does, so that
// exact ties (e.g. zero metrics) select the same anchors as torch.topk on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include "assign.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <Python.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define Y10_X86 1
#endif

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

// ATen's vectorised CPU kernels use SLEEF (pow, and atan when MKL is absent) and MKL VML (atan). They are
// exported by libtorch_cpu; weak references keep the extension loadable where a build lacks them.
extern "C" {
#ifdef Y10_X86
__m512 Sleef_powf16_u10(__m512, __m512) __attribute__((weak));
__m256 Sleef_powf8_u10(__m256, __m256) __attribute__((weak));
__m512 Sleef_atanf16_u10(__m512) __attribute__((weak));
__m256 Sleef_atanf8_u10(__m256) __attribute__((weak));
#endif
void VMSATAN_(const void* n, const float* a, float* r, const long long* mode) __attribute__((weak));
}

namespace yolov10_kernels {
namespace {

// ------------------------------------------------------------------------------------------------
// float32 math exactly as the reference's torch CPU ops compute it
// ------------------------------------------------------------------------------------------------
constexpr float kIouEps = 1e-7f;                                  // bbox_iou(eps=1e-7)
const float kOnePlusIouEps = static_cast<float>(1.0 + 1e-7);       // (1 + eps), a Python float
const float kVCoef = static_cast<float>(4.0 / (M_PI * M_PI));      // 4 / math.pi**2
constexpr float kInsideEps = 1e-9f;                               // select_candidates_in_gts eps

inline bool isnan_f(float x) { return x != x; }
// torch.minimum / torch.maximum / clamp_min propagate NaN
inline float t_min(float a, float b) { return isnan_f(a) ? a : (isnan_f(b) ? b : (b < a ? b : a)); }
inline float t_max(float a, float b) { return isnan_f(a) ? a : (isnan_f(b) ? b : (b > a ? b : a)); }
inline float t_clamp0(float a) { return isnan_f(a) ? a : (a < 0.f ? 0.f : a); }
// amax: NaN wins
inline float amax2(float acc, float v) { return (isnan_f(acc) || isnan_f(v)) ? NAN : (v > acc ? v : acc); }

enum class VecKind { None, Avx2, Avx512 };

struct MathCfg {
  VecKind vec = VecKind::None;
  bool mkl_atan = false;
};

const MathCfg& math_cfg() {
  static const MathCfg cfg = [] {
    MathCfg c;
    const std::string cap = at::get_cpu_capability();  // honours ATEN_CPU_CAPABILITY like ATen's kernels
#ifdef Y10_X86
    if (cap == "AVX512" && Sleef_powf16_u10 && Sleef_atanf16_u10 && __builtin_cpu_supports("avx512f")) {
      c.vec = VecKind::Avx512;
    } else if ((cap == "AVX2" || cap == "AVX512") && Sleef_powf8_u10 && Sleef_atanf8_u10 &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      c.vec = VecKind::Avx2;
    }
#endif
    c.mkl_atan = VMSATAN_ != nullptr;
    return c;
  }();
  return cfg;
}

#ifdef Y10_X86
__attribute__((target("avx512f"))) void pow_avx512(const float* x, float* y, int64_t n, float e) {
  const __m512 ev = _mm512_set1_ps(e);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, Sleef_powf16_u10(_mm512_loadu_ps(x + i), ev));
  if (i < n) {
    alignas(64) float buf[16] = {0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    _mm512_store_ps(buf, Sleef_powf16_u10(_mm512_load_ps(buf), ev));
    std::memcpy(y + i, buf, (n - i) * sizeof(float));
  }
}
__attribute__((target("avx2,fma"))) void pow_avx2(const float* x, float* y, int64_t n, float e) {
  const __m256 ev = _mm256_set1_ps(e);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Sleef_powf8_u10(_mm256_loadu_ps(x + i), ev));
  if (i < n) {
    alignas(32) float buf[8] = {0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    _mm256_store_ps(buf, Sleef_powf8_u10(_mm256_load_ps(buf), ev));
    std::memcpy(y + i, buf, (n - i) * sizeof(float));
  }
}
__attribute__((target("avx512f"))) void atan_avx512(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, Sleef_atanf16_u10(_mm512_loadu_ps(x + i)));
  if (i < n) {
    alignas(64) float buf[16] = {0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    _mm512_store_ps(buf, Sleef_atanf16_u10(_mm512_load_ps(buf)));
    std::memcpy(y + i, buf, (n - i) * sizeof(float));
  }
}
__attribute__((target("avx2,fma"))) void atan_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Sleef_atanf8_u10(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float buf[8] = {0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    _mm256_store_ps(buf, Sleef_atanf8_u10(_mm256_load_ps(buf)));
    std::memcpy(y + i, buf, (n - i) * sizeof(float));
  }
}
#endif

// y = x.pow(e) for a float32 tensor and a Python-float exponent, with ATen's CPU special cases
// (pow_tensor_scalar_kernel: 0 -> fill 1, 1 -> copy, .5 sqrt, 2, 3, -.5 rsqrt, -1, -2, else vectorised pow).
void pow_scalar(const float* x, float* y, int64_t n, double e) {
  if (e == 0.0) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.f;
  } else if (e == 1.0) {
    if (y != x) std::memcpy(y, x, n * sizeof(float));
  } else if (e == 0.5) {
    for (int64_t i = 0; i < n; i++) y[i] = std::sqrt(x[i]);
  } else if (e == 2.0) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i];
  } else if (e == 3.0) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i] * x[i];
  } else if (e == -0.5) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.f / std::sqrt(x[i]);
  } else if (e == -1.0) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.f / x[i];
  } else if (e == -2.0) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.f / (x[i] * x[i]);
  } else {
    const float ef = static_cast<float>(e);
    switch (math_cfg().vec) {
#ifdef Y10_X86
      case VecKind::Avx512: pow_avx512(x, y, n, ef); break;
      case VecKind::Avx2: pow_avx2(x, y, n, ef); break;
#endif
      default:
        for (int64_t i = 0; i < n; i++) y[i] = std::pow(x[i], ef);
    }
  }
}

// y = x.atan(): ATen uses MKL VML (HA, no FTZ/DAZ) when built with MKL, else SLEEF / std::atan.
void atan_array(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const MathCfg& cfg = math_cfg();
  if (cfg.mkl_atan) {
    const long long mode = 0x2LL | 0x140000LL | 0x100LL;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE
    constexpr int64_t kChunk = 1 << 30;
    for (int64_t i = 0; i < n; i += kChunk) {
      // MKL_INT is 32-bit (LP64) or 64-bit (ILP64); a little-endian int64 holding a small count reads
      // correctly as either.
      const long long cnt = std::min<int64_t>(kChunk, n - i);
      VMSATAN_(&cnt, x + i, y + i, &mode);
    }
    return;
  }
  switch (cfg.vec) {
#ifdef Y10_X86
    case VecKind::Avx512: atan_avx512(x, y, n); return;
    case VecKind::Avx2: atan_avx2(x, y, n); return;
#endif
    default:
      for (int64_t i = 0; i < n; i++) y[i] = std::atan(x[i]);
  }
}

// w/h ratio of a box as bbox_iou computes it: w = x2 - x1, h = y2 - y1 + eps
inline float wh_ratio(const float* b) { return (b[2] - b[0]) / ((b[3] - b[1]) + kIouEps); }

// clamp(CIoU(gt, pd), 0) with bbox_iou's float32 op order; atan_g / atan_p = atan(w/h) of gt / pred.
inline float ciou_clamped(const float* g, const float* p, float atan_g, float atan_p) {
  const float w1 = g[2] - g[0], h1 = (g[3] - g[1]) + kIouEps;
  const float w2 = p[2] - p[0], h2 = (p[3] - p[1]) + kIouEps;
  const float iw = t_clamp0(t_min(g[2], p[2]) - t_max(g[0], p[0]));
  const float ih = t_clamp0(t_min(g[3], p[3]) - t_max(g[1], p[1]));
  const float inter = iw * ih;
  const float uni = ((w1 * h1 + w2 * h2) - inter) + kIouEps;
  const float iou = inter / uni;
  const float cw = t_max(g[2], p[2]) - t_min(g[0], p[0]);
  const float ch = t_max(g[3], p[3]) - t_min(g[1], p[1]);
  const float c2 = (cw * cw + ch * ch) + kIouEps;
  const float dx = ((p[0] + p[2]) - g[0]) - g[2];
  const float dy = ((p[1] + p[3]) - g[1]) - g[3];
  const float rho2 = (dx * dx + dy * dy) / 4.f;
  const float d = atan_p - atan_g;
  const float v = kVCoef * (d * d);
  const float alpha = v / ((v - iou) + kOnePlusIouEps);
  return t_clamp0(iou - (rho2 / c2 + v * alpha));
}

inline bool inside(const float* g, float ax, float ay) {
  // (anc - lt, rb - anc).amin(-1) > eps; NaN anywhere -> false, as amin propagates NaN
  const float d0 = ax - g[0], d1 = ay - g[1], d2 = g[2] - ax, d3 = g[3] - ay;
  return d0 > kInsideEps && d1 > kInsideEps && d2 > kInsideEps && d3 > kInsideEps;
}

// torch.topk(largest=True) comparator of ATen's topk_impl_loop (NaN sorts as the largest)
using Elem = std::pair<float, int64_t>;
struct TopkGreater {
  bool operator()(const Elem& x, const Elem& y) const {
    return (isnan_f(x.first) && !isnan_f(y.first)) || (x.first > y.first);
  }
};

template <typename scalar_t>
inline float score_at(const scalar_t* s, int64_t sA, int64_t sC, int64_t a, int64_t c) {
  return static_cast<float>(s[a * sA + c * sC]);
}

struct Problem {
  int64_t B, A, M, C, K;
  double alpha, beta;
  float eps;
  const float* anc;   // (A, 2)
  const float* pd;    // (B, A, 4)
  const float* gt;    // (B, M, 4)
  const int64_t* lab; // (B, M)
  const bool* valid;  // (B, M)
};

// Anchors sorted by (y, x, index), grouped into rows of equal y, so that the anchors strictly inside a box
// are found with binary searches (a superset filter; the exact test is then applied to each). Storage is a
// torch tensor (the c10 allocator) like all the scratch here.
struct AnchorIndex {
  at::Tensor storage;
  int64_t n = 0, rows = 0;     // anchors indexed (NaN anchors are left out: never inside), rows
  float* row_y = nullptr;      // y of each row, ascending
  int32_t* row_start = nullptr;  // rows + 1 offsets into xs / idx
  float* xs = nullptr;         // x of the sorted anchors
  int32_t* idx = nullptr;      // anchor index of the sorted anchors
};

}  // namespace
}  // namespace yolov10_kernels

namespace yolov10_kernels {
namespace {

void build_anchor_index(const float* anc, int64_t A, AnchorIndex& ix) {
  ix.storage = at::empty({4 * A + 1}, at::TensorOptions().dtype(at::kInt));
  int32_t* base = ix.storage.data_ptr<int32_t>();
  ix.idx = base;
  ix.xs = reinterpret_cast<float*>(base + A);
  ix.row_y = reinterpret_cast<float*>(base + 2 * A);
  ix.row_start = base + 3 * A;
  int64_t n = 0;
  for (int64_t a = 0; a < A; a++) {
    if (!isnan_f(anc[2 * a]) && !isnan_f(anc[2 * a + 1])) ix.idx[n++] = static_cast<int32_t>(a);
  }
  std::sort(ix.idx, ix.idx + n, [anc](int32_t i, int32_t j) {
    const float yi = anc[2 * i + 1], yj = anc[2 * j + 1];
    if (yi != yj) return yi < yj;
    const float xi = anc[2 * i], xj = anc[2 * j];
    if (xi != xj) return xi < xj;
    return i < j;
  });
  int64_t rows = 0;
  for (int64_t r = 0; r < n; r++) {
    const float y = anc[2 * ix.idx[r] + 1];
    if (r == 0 || y != ix.row_y[rows - 1]) {
      ix.row_y[rows] = y;
      ix.row_start[rows] = static_cast<int32_t>(r);
      rows++;
    }
    ix.xs[r] = anc[2 * ix.idx[r]];
  }
  ix.row_start[rows] = static_cast<int32_t>(n);
  ix.n = n;
  ix.rows = rows;
}

// Anchor indices strictly inside gt box g (exact reference test), ascending. Returns the count.
int64_t gather_inside(const Problem& P, const AnchorIndex& ix, const float* g, int32_t* out) {
  const float x1 = g[0], y1 = g[1], x2 = g[2], y2 = g[3];
  // rows with y1 < y < y2 (NaN bounds give empty ranges)
  const int64_t r0 = std::upper_bound(ix.row_y, ix.row_y + ix.rows, y1) - ix.row_y;
  const int64_t r1 = std::lower_bound(ix.row_y, ix.row_y + ix.rows, y2) - ix.row_y;
  int64_t n = 0;
  for (int64_t r = r0; r < r1; r++) {
    const float* xb = ix.xs + ix.row_start[r];
    const float* xe = ix.xs + ix.row_start[r + 1];
    const float* c0 = std::upper_bound(xb, xe, x1);
    const float* c1 = std::lower_bound(c0, xe, x2);
    for (const float* c = c0; c < c1; c++) {
      const int32_t a = ix.idx[c - ix.xs];
      if (inside(g, P.anc[2 * a], P.anc[2 * a + 1])) out[n++] = a;
    }
  }
  std::sort(out, out + n);
  return n;
}

template <typename scalar_t>
void assign_cpu_impl(const Problem& P, const scalar_t* scores, int64_t sB, int64_t sA, int64_t sC,
                     int64_t* out_labels, float* out_bboxes, float* out_scores, bool* out_fg,
                     int64_t* out_idx) {
  const int64_t B = P.B, A = P.A, M = P.M, C = P.C, K = P.K;
  const int nthreads = std::max(1, at::get_num_threads());

  // --- scratch, allocated here through the c10 CPU allocator (visible to torch's memory profiler) ------
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto i32 = at::TensorOptions().dtype(at::kInt);
  at::Tensor atan_pd_t = at::empty({B * A}, f32);  // atan(w/h) of every predicted box
  at::Tensor atan_gt_t = at::empty({B * M}, f32);  // atan(w/h) of every gt box
  at::Tensor pos_a_t = at::empty({B * M * K}, i32);  // positives of each gt (anchor, metric, overlap)
  at::Tensor pos_am_t = at::empty({B * M * K}, f32);
  at::Tensor pos_ov_t = at::empty({B * M * K}, f32);
  at::Tensor pos_n_t = at::empty({B * M}, i32);
  at::Tensor cnt_t = at::zeros({B * A}, i32);   // number of gts claiming each anchor
  at::Tensor win_t = at::empty({B * A}, i32);   // the gt an anchor is assigned to
  at::Tensor amw_t = at::empty({B * A}, f32);   // align metric / overlap of (winner, anchor)
  at::Tensor ovw_t = at::empty({B * A}, f32);
  at::Tensor pal_t = at::empty({B * M}, f32);   // per-gt max align metric / max overlap over positives
  at::Tensor pov_t = at::empty({B * M}, f32);
  const bool full_topk = !(K * 64 <= A);  // ATen: partial_sort when k * 64 <= n, else nth_element
  // per-thread: candidate anchors, their overlaps, scores/metrics, pow temp; (+ full queue for nth_element)
  at::Tensor scratch_t = at::empty({nthreads, 4 * A}, f32);
  at::Tensor queue_t = full_topk ? at::empty({nthreads, A * static_cast<int64_t>(sizeof(Elem))}, at::kByte)
                                 : at::Tensor();

  float* atan_pd = atan_pd_t.data_ptr<float>();
  float* atan_gt = atan_gt_t.data_ptr<float>();
  int32_t* pos_a = pos_a_t.data_ptr<int32_t>();
  float* pos_am = pos_am_t.data_ptr<float>();
  float* pos_ov = pos_ov_t.data_ptr<float>();
  int32_t* pos_n = pos_n_t.data_ptr<int32_t>();
  int32_t* cnt = cnt_t.data_ptr<int32_t>();
  int32_t* win = win_t.data_ptr<int32_t>();
  float* amw = amw_t.data_ptr<float>();
  float* ovw = ovw_t.data_ptr<float>();
  float* pal = pal_t.data_ptr<float>();
  float* pov = pov_t.data_ptr<float>();

  AnchorIndex ix;
  build_anchor_index(P.anc, A, ix);

  // --- atan(w/h) of predicted and gt boxes (ratios first, then one vectorised atan like ATen) -----------
  at::parallel_for(0, B * A, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) atan_pd[i] = wh_ratio(P.pd + 4 * i);
    atan_array(atan_pd + lo, atan_pd + lo, hi - lo);
  });
  for (int64_t i = 0; i < B * M; i++) atan_gt[i] = wh_ratio(P.gt + 4 * i);
  atan_array(atan_gt, atan_gt, B * M);

  // --- phase 1: per (image, gt): candidates inside the gt, CIoU, metric, top-k ------------------------
  at::parallel_for(0, B * M, 1, [&](int64_t lo, int64_t hi) {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < nthreads, "task_aligned_assign: unexpected thread id");
    float* sbase = scratch_t.data_ptr<float>() + static_cast<int64_t>(tid) * 4 * A;
    int32_t* cand = reinterpret_cast<int32_t*>(sbase);
    float* cov = sbase + A;
    float* cam = sbase + 2 * A;
    float* tmp = sbase + 3 * A;
    Elem* queue = full_topk ? reinterpret_cast<Elem*>(queue_t.data_ptr<uint8_t>()) + static_cast<int64_t>(tid) * A
                            : nullptr;
    std::vector<Elem> heap(K + 1);
    for (int64_t bm = lo; bm < hi; bm++) {
      const int64_t b = bm / M;
      int32_t* my_a = pos_a + bm * K;
      float* my_am = pos_am + bm * K;
      float* my_ov = pos_ov + bm * K;
      pos_n[bm] = 0;
      if (!P.valid[bm]) continue;  // padded gt: topk idx 0, masked out by mask_gt
      const float* g = P.gt + 4 * bm;
      const int64_t n = gather_inside(P, ix, g, cand);
      if (n == 0) continue;
      const float ag = atan_gt[bm];
      const float* pdb = P.pd + 4 * b * A;
      const float* atp = atan_pd + b * A;
      int64_t c = P.lab[bm];
      if (c < 0) c += C;  // Python-style indexing of pd_scores[..., label] (range checked by the caller)
      const scalar_t* sc = scores + b * sB;
      for (int64_t j = 0; j < n; j++) {
        const int64_t a = cand[j];
        cov[j] = ciou_clamped(g, pdb + 4 * a, ag, atp[a]);
        cam[j] = score_at(sc, sA, sC, a, c);
      }
      pow_scalar(cam, cam, n, P.alpha);   // bbox_scores.pow(alpha)
      pow_scalar(cov, tmp, n, P.beta);    // overlaps.pow(beta)
      for (int64_t j = 0; j < n; j++) cam[j] = cam[j] * tmp[j];

      // top-k of the metric row (zeros for every anchor outside the gt) as ATen's topk computes it
      int64_t npos = 0;
      auto emit = [&](int64_t a, int64_t j) {  // a is in the top-k; candidate slot j (or -1)
        if (j < 0) return;  // outside the gt: not a positive
        my_a[npos] = static_cast<int32_t>(a);
        my_am[npos] = cam[j];
        my_ov[npos] = cov[j];
        npos++;
      };
      if (!full_topk) {
        // partial_sort = heap_select over the row: heap of elements 0..K-1, then every later element that
        // compares greater than the heap top replaces it (pop_heap). Zeros never do, so only candidates
        // with a non-zero (or NaN) metric need visiting, in index order.
        int64_t j = 0;
        for (int64_t e = 0; e < K; e++) {
          float v = 0.f;
          if (j < n && cand[j] == e) v = cam[j++];
          heap[e] = Elem(v, e);
        }
        TopkGreater comp;
        std::make_heap(heap.begin(), heap.begin() + K, comp);
        for (; j < n; j++) {
          const Elem x(cam[j], cand[j]);
          if (comp(x, heap[0])) {
            heap[K] = x;
            std::pop_heap(heap.begin(), heap.begin() + K + 1, comp);
          }
        }
        // map the selected anchors back to candidate slots (cand is sorted)
        for (int64_t e = 0; e < K; e++) {
          const int64_t a = heap[e].second;
          const int32_t* it = std::lower_bound(cand, cand + n, static_cast<int32_t>(a));
          emit(a, (it != cand + n && *it == a) ? (it - cand) : -1);
        }
      } else {
        for (int64_t a = 0; a < A; a++) queue[a] = Elem(0.f, a);
        for (int64_t jj = 0; jj < n; jj++) queue[cand[jj]].first = cam[jj];
        std::nth_element(queue, queue + K - 1, queue + A, TopkGreater());
        for (int64_t e = 0; e < K; e++) {
          const int64_t a = queue[e].second;
          const int32_t* it = std::lower_bound(cand, cand + n, static_cast<int32_t>(a));
          emit(a, (it != cand + n && *it == a) ? (it - cand) : -1);
        }
      }
      pos_n[bm] = static_cast<int32_t>(npos);
    }
  });

  // --- phase 2: claims per anchor (per image, gts in order) -------------------------------------------
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; b++) {
      int32_t* cb = cnt + b * A;
      for (int64_t m = 0; m < M; m++) {
        const int64_t bm = b * M + m;
        for (int64_t j = 0; j < pos_n[bm]; j++) {
          const int64_t a = pos_a[bm * K + j];
          if (cb[a]++ == 0) {
            win[b * A + a] = static_cast<int32_t>(m);
            amw[b * A + a] = pos_am[bm * K + j];
            ovw[b * A + a] = pos_ov[bm * K + j];
          }
        }
      }
    }
  });

  // --- phase 3: anchors claimed by several gts go to the gt of highest overlap (argmax over all gts) ---
  at::parallel_for(0, B * A, 256, [&](int64_t lo, int64_t hi) {
    float one[1], pw[1];
    for (int64_t i = lo; i < hi; i++) {
      if (cnt[i] < 2) continue;
      const int64_t b = i / A, a = i % A;
      const float ax = P.anc[2 * a], ay = P.anc[2 * a + 1];
      const float* p = P.pd + 4 * i;
      auto ov_of = [&](int64_t m) -> float {
        const int64_t bm = b * M + m;
        const float* g = P.gt + 4 * bm;
        if (!P.valid[bm] || !inside(g, ax, ay)) return 0.f;
        return ciou_clamped(g, p, atan_gt[bm], atan_pd[i]);
      };
      // argmax: first maximum, NaN counts as the maximum
      int64_t best = 0;
      float bv = ov_of(0);
      for (int64_t m = 1; m < M && !isnan_f(bv); m++) {
        const float v = ov_of(m);
        if (isnan_f(v) || v > bv) {
          bv = v;
          best = m;
        }
      }
      const int64_t bm = b * M + best;
      float am = 0.f;
      if (P.valid[bm] && inside(P.gt + 4 * bm, ax, ay)) {
        int64_t c = P.lab[bm];
        if (c < 0) c += C;
        one[0] = score_at(scores + b * sB, sA, sC, a, c);
        pow_scalar(one, one, 1, P.alpha);
        pw[0] = bv;
        pow_scalar(pw, pw, 1, P.beta);
        am = one[0] * pw[0];
      }
      win[i] = static_cast<int32_t>(best);
      amw[i] = am;
      ovw[i] = bv;
    }
  });

  // --- phase 4: per-gt max metric and max overlap over its positives (amax includes the zeros) -------
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; b++) {
      float* pa = pal + b * M;
      float* po = pov + b * M;
      for (int64_t m = 0; m < M; m++) pa[m] = po[m] = 0.f;
      for (int64_t a = 0; a < A; a++) {
        const int64_t i = b * A + a;
        if (cnt[i] == 0) continue;
        const int32_t w = win[i];
        pa[w] = amax2(pa[w], amw[i]);
        po[w] = amax2(po[w], ovw[i]);
      }
    }
  });

  // --- phase 5: targets --------------------------------------------------------------------------------
  at::parallel_for(0, B * A, 512, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      const int64_t b = i / A;
      const bool fg = cnt[i] > 0;
      const int64_t w = fg ? win[i] : 0;
      const int64_t bm = b * M + w;
      const int64_t lab = std::max<int64_t>(P.lab[bm], 0);
      out_idx[i] = w;
      out_fg[i] = fg;
      out_labels[i] = lab;
      std::memcpy(out_bboxes + 4 * i, P.gt + 4 * bm, 4 * sizeof(float));
      float* row = out_scores + i * C;
      std::memset(row, 0, C * sizeof(float));
      if (fg) {
        // norm = amax over gts of (align_metric * pos_overlaps / (pos_align_metrics + eps)): only the
        // winner's term can be non-zero; the others contribute 0 (max(0, x) below, NaN propagating).
        const float term = (amw[i] * pov[bm]) / (pal[bm] + P.eps);
        row[lab] = M > 1 ? amax2(0.f, term) : term;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> task_aligned_assign_cpu(
    const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
    int64_t num_classes, double alpha, double beta, double eps) {
  auto [pd, anc, gt, lab, valid] =
      check_and_prepare(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes);
  const int64_t B = pd_scores.size(0), A = pd_scores.size(1), C = pd_scores.size(2), M = gt.size(1);
  TORCH_CHECK(M >= 1, "task_aligned_assign needs at least one gt slot (M == 0 is handled in Python)");
  check_labels(lab, C);
  auto opts = pd_scores.options();
  at::Tensor labels = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor bboxes = at::empty({B, A, 4}, opts.dtype(at::kFloat));
  at::Tensor scores = at::empty({B, A, C}, opts.dtype(at::kFloat));
  at::Tensor fg = at::empty({B, A}, opts.dtype(at::kBool));
  at::Tensor idx = at::empty({B, A}, opts.dtype(at::kLong));
  if (B == 0 || A == 0) return {labels, bboxes, scores, fg, idx};

  Problem P{B, A, M, C, topk, alpha, beta, static_cast<float>(eps), anc.data_ptr<float>(), pd.data_ptr<float>(),
            gt.data_ptr<float>(), lab.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pd_scores.scalar_type(), "task_aligned_assign_cpu", [&] {
    assign_cpu_impl<scalar_t>(P, pd_scores.data_ptr<scalar_t>(), pd_scores.stride(0), pd_scores.stride(1),
                              pd_scores.stride(2), labels.data_ptr<int64_t>(), bboxes.data_ptr<float>(),
                              scores.data_ptr<float>(), fg.data_ptr<bool>(), idx.data_ptr<int64_t>());
  });
  return {labels, bboxes, scores, fg, idx};
}

}  // namespace
}  // namespace yolov10_kernels

TORCH_LIBRARY_FRAGMENT(yolov10_kernels, m) {
  m.def(
      "task_aligned_assign(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int num_classes, float alpha, float beta, float eps) -> "
      "(Tensor target_labels, Tensor target_bboxes, Tensor target_scores, Tensor fg_mask, Tensor target_gt_idx)");
}

TORCH_LIBRARY_IMPL(yolov10_kernels, CPU, m) {
  m.impl("task_aligned_assign", &yolov10_kernels::task_aligned_assign_cpu);
}

// `import yolov10_kernels._C` (the setup.py build) runs the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
