// Fused, memory-bounded task-aligned assignment (TAL) for YOLOv10: CPU implementation, op schema and the
// stub Python module that makes `import yolov10_kernels._C` register the ops.
//
// Semantics: exactly those of yolov10.assign.TaskAlignedAssigner (= ultralytics 8.3.253
// utils/tal.py TaskAlignedAssigner), for M > 0 (the Python wrapper handles M == 0):
//   in(m,a)   = min(ax - x1, ay - y1, x2 - ax, y2 - ay) > 1e-9      (anchor strictly inside the gt)
//               with stride_val > 0 (ultralytics 8.4): inside the gt sent through xyxy -> xywh -> xyxy
//               whose sides below stride_val are raised to it (valid gts only); CIoU still uses the gt
//   pair(m,a) = in(m,a) && mask_gt(m)
//   ov(m,a)   = pair ? clamp(CIoU(gt_m, pd_a), 0) : 0
//   am(m,a)   = pair ? score(a, label_m)^alpha * ov^beta : 0
//   topk over all A anchors of am(m, .) per gt (torch.topk; padded gts get nothing),
//   pos(m,a)  = a in topk(m) && pair(m,a)
//   anchors claimed by >= 2 gts go to argmax_m ov(m,a) over ALL gts (first max; may be a gt that did not
//   claim the anchor, or gt 0 if every overlap is 0), target_gt_idx = that gt (0 for background),
//   with topk2 > 0 and != topk (ultralytics 8.4): each gt keeps only the anchors it won that are in the
//   top-topk2 of its row am(m, .) * won(m, .) (torch.topk over all A, ties as above); the others become
//   background,
//   target_scores[a, label] = am(w,a) * max_pos ov(w,.) / (max_pos am(w,.) + eps).
// ciou84: ultralytics 8.4's op order: CIoU's alpha term (8.4 wrote v / (1 - iou + v + eps)), and the metric's
// pow over the flat array of pairs inside their gt instead of the dense (B, M, A) tensor (see RefLoop).
// Nothing of shape (B, M, A) is materialised: per (image, gt) only the anchors inside the gt are visited
// (found through an anchor index sorted by (y, x)), their CIoU and metric are computed and a top-k is
// selected; then per anchor the claims are resolved and the targets written. Images run in parallel
// (at::parallel_for, one region per call); extra memory is O(threads * (A + M*k)) beyond the outputs.
//
// Bit parity with the float32 reference on the CPU: every elementwise op is done in float32 in the
// reference's order (no FMA contraction), atan goes through MKL VML in HA mode and pow through SLEEF
// exactly as ATen's CPU kernels do (resolved at run time from libtorch_cpu, std:: fallbacks otherwise),
// pow with the double-precision scalar op where ATen's loop leaves an element to it (pow_at), and the top-k
// replays libstdc++'s partial_sort / nth_element as ATen's topk_impl_loop does, so that
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
void VMSSQRT_(const void* n, const float* a, float* r, const long long* mode) __attribute__((weak));
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
  bool mkl_sqrt = false;
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
    c.mkl_sqrt = VMSSQRT_ != nullptr;
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

using VmlFn = void (*)(const void*, const float*, float*, const long long*);

// y = f(x) through an MKL VML function as ATen's vml.h calls it (HA, no FTZ/DAZ, errors ignored)
void vml_array(VmlFn f, const float* x, float* y, int64_t n) {
  const long long mode = 0x2LL | 0x140000LL | 0x100LL;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE
  constexpr int64_t kChunk = 1 << 30;
  for (int64_t i = 0; i < n; i += kChunk) {
    // MKL_INT is 32-bit (LP64) or 64-bit (ILP64); a little-endian int64 holding a small count reads
    // correctly as either.
    const long long cnt = std::min<int64_t>(kChunk, n - i);
    f(&cnt, x + i, y + i, &mode);
  }
}

// y = x.sqrt() (also x.pow(.5)): ATen uses MKL VML when built with MKL, whose HA sqrt is not always the
// correctly rounded one, else the exact sqrt
void sqrt_array(const float* x, float* y, int64_t n) {
  if (math_cfg().mkl_sqrt) {
    if (n > 0) vml_array(VMSSQRT_, x, y, n);
    return;
  }
  for (int64_t i = 0; i < n; i++) y[i] = std::sqrt(x[i]);
}

// y = x.pow(e) for a float32 tensor and a Python-float exponent, with ATen's CPU special cases
// (pow_tensor_scalar_kernel: 0 -> fill 1, 1 -> copy, .5 sqrt, 2, 3, -.5 rsqrt, -1, -2, else vectorised pow).
void pow_scalar(const float* x, float* y, int64_t n, double e) {
  if (e == 0.0) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.f;
  } else if (e == 1.0) {
    if (y != x) std::memcpy(y, x, n * sizeof(float));
  } else if (e == 0.5) {
    sqrt_array(x, y, n);
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

// Where ATen's elementwise CPU loop computes each element of the array the reference's metric pow runs over:
// 8.3 (and yolov10's reference) the dense (B, M, A) tensor, element (b, m, a) at (b * M + m) * A + a; 8.4 the
// flat array of pairs inside their gt (indices = mask.nonzero(): image-major, then gt, then anchor ascending).
// TensorIterator splits n > 32768 elements into divup(n, min(threads, divup(n, 32768))) sized chunks, and each
// chunk's vectorised loop runs 2 * Vectorized<float>::size() elements at a time, leaving the rest of the chunk to
// the scalar op. For pow with a general exponent that is std::pow(float, double), a double pow rounded to float,
// not SLEEF's powf: the last bits of an element depend on its position.
struct RefLoop {
  int64_t n = 0, chunk = 1, step = 0;  // step 0: no vectorised loop reproduced (every element as pow_scalar)
};

RefLoop ref_loop(int64_t n) {
  RefLoop L;
  L.n = n;
  const int64_t grain = 32768, threads = at::get_num_threads();  // at::internal::GRAIN_SIZE
  const int64_t tasks = (n > grain && threads > 1) ? std::min(threads, (n + grain - 1) / grain) : 1;
  L.chunk = std::max<int64_t>(1, (n + tasks - 1) / tasks);
  const VecKind v = math_cfg().vec;
  L.step = v == VecKind::Avx512 ? 32 : (v == VecKind::Avx2 ? 16 : 0);
  return L;
}

bool general_pow(double e) {  // the exponents pow_scalar does not special-case
  return e != 0.0 && e != 1.0 && e != 0.5 && e != 2.0 && e != 3.0 && e != -0.5 && e != -1.0 && e != -2.0;
}

inline bool in_scalar_tail(const RefLoop& L, int64_t p) {
  const int64_t c0 = p / L.chunk * L.chunk, c1 = std::min(L.n, c0 + L.chunk);
  return p >= c0 + (c1 - c0) / L.step * L.step;
}

// y = x.pow(e) for n elements at positions base + (at ? at[j] : j) of the reference's array: SLEEF where ATen's
// loop is vectorised, the rounded double pow in the chunks' scalar tails. In place (y == x) is fine.
void pow_at(const float* x, float* y, int64_t n, double e, int64_t base, const int32_t* at, const RefLoop& L) {
  std::vector<std::pair<int64_t, float>> tails;  // (j, x[j]) of the tail elements, read before y is written
  if (L.step > 0 && general_pow(e)) {
    for (int64_t j = 0; j < n; j++) {
      if (in_scalar_tail(L, base + (at ? at[j] : j))) tails.emplace_back(j, x[j]);
    }
  }
  pow_scalar(x, y, n, e);
  for (const auto& [j, v] : tails) y[j] = static_cast<float>(std::pow(static_cast<double>(v), e));
}

// y = x.atan(): ATen uses MKL VML (HA, no FTZ/DAZ) when built with MKL, else SLEEF / std::atan.
void atan_array(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const MathCfg& cfg = math_cfg();
  if (cfg.mkl_atan) {
    vml_array(VMSATAN_, x, y, n);
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
// alpha84: CIoU's alpha as ultralytics 8.4 writes it, v / (1 - iou + v + eps) (8.3: v / (v - iou + (1 + eps))).
inline float ciou_clamped(const float* g, const float* p, float atan_g, float atan_p, bool alpha84) {
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
  const float alpha = alpha84 ? v / (((1.f - iou) + v) + kIouEps) : v / ((v - iou) + kOnePlusIouEps);
  return t_clamp0(iou - (rho2 / c2 + v * alpha));
}

// The box of the inside test: the gt itself, or with stride_val > 0 (ultralytics 8.4 select_candidates_in_gts)
// the gt through xyxy2xywh -> sides below stride_val raised to it (valid gts) -> xywh2xyxy, in that float32 order.
inline void inside_box(const float* g, bool valid, float stride_val, float* out) {
  if (!(stride_val > 0.f)) {
    std::memcpy(out, g, 4 * sizeof(float));
    return;
  }
  const float xc = (g[0] + g[2]) / 2.f, yc = (g[1] + g[3]) / 2.f;
  float w = g[2] - g[0], h = g[3] - g[1];
  if (valid && w < stride_val) w = stride_val;
  if (valid && h < stride_val) h = stride_val;
  const float hw = w / 2.f, hh = h / 2.f;
  out[0] = xc - hw;
  out[1] = yc - hh;
  out[2] = xc + hw;
  out[3] = yc + hh;
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
  int64_t K2;          // second top-k (ultralytics 8.4 topk2); 0 = none
  float stride_val;    // minimum gt side of the inside test (ultralytics 8.4); 0 = the gt as is
  bool alpha84;        // CIoU alpha in ultralytics 8.4's op order
  double alpha, beta;
  float eps;
  const float* anc;   // (A, 2)
  const float* pd;    // (B, A, 4)
  const float* gt;    // (B, M, 4)
  const int64_t* lab; // (B, M)
  const bool* valid;  // (B, M)
  RefLoop loop;         // how the reference's pow ran over its array (dense with !alpha84, else the pairs)
  const int64_t* first; // (B, M) pair layout: position of each (image, gt)'s first pair in that array
};

// Where (b, m)'s elements start in the array the reference's pow ran over (dense: plus a; pairs: plus a's rank)
inline int64_t pow_base(const Problem& P, int64_t b, int64_t m) {
  return P.alpha84 ? P.first[b * P.M + m] : (b * P.M + m) * P.A;
}

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

// Anchor indices strictly inside gt box g (exact reference test), ascending, to out (nullptr: only count them).
// Returns the count.
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
      if (inside(g, P.anc[2 * a], P.anc[2 * a + 1])) {
        if (out) out[n] = a;
        n++;
      }
    }
  }
  if (out) std::sort(out, out + n);
  return n;
}

// Per-thread workspace: one image at a time (the buffers are reused across the thread's images).
struct Workspace {
  int32_t* cand;    // (A) anchors inside the current gt
  float* cov;       // (A) their overlaps
  float* cam;       // (A) their scores, then metrics
  float* tmp;       // (A) pow temp
  float* atan_pd;   // (A) atan(w/h) of the image's predicted boxes
  int32_t* cnt;     // (A) number of gts claiming each anchor
  int32_t* win;     // (A) the gt an anchor is assigned to
  float* amw;       // (A) align metric of (winner, anchor)
  float* ovw;       // (A) overlap of (winner, anchor)
  float* atan_gt;   // (M) atan(w/h) of the image's gts
  float* ibox;      // (4M) boxes of the inside test
  int32_t* grp;     // (M+1) offsets of each gt's won anchors (topk2)
  int32_t* sel;     // (max(K, K2)) anchors selected by a top-k
  float* pal;       // (M) per-gt max align metric over its positives
  float* pov;       // (M) per-gt max overlap over its positives
  int32_t* pos_a;   // (M*K) positives of each gt: anchor, metric, overlap
  float* pos_am;    // (M*K)
  float* pos_ov;    // (M*K)
  int32_t* pos_n;   // (M)
  Elem* queue;      // (A) full topk queue, only for the nth_element path
  static int64_t words(int64_t A, int64_t M, int64_t K, int64_t Kmax) {
    return 9 * A + 4 * M + 3 * M * K + 5 * M + 1 + Kmax;
  }
  Workspace(float* base, int64_t A, int64_t M, int64_t K, Elem* q) {
    cand = reinterpret_cast<int32_t*>(base);
    cov = base + A;
    cam = base + 2 * A;
    tmp = base + 3 * A;
    atan_pd = base + 4 * A;
    cnt = reinterpret_cast<int32_t*>(base + 5 * A);
    win = reinterpret_cast<int32_t*>(base + 6 * A);
    amw = base + 7 * A;
    ovw = base + 8 * A;
    float* g = base + 9 * A;
    atan_gt = g;
    pal = g + M;
    pov = g + 2 * M;
    pos_n = reinterpret_cast<int32_t*>(g + 3 * M);
    pos_a = reinterpret_cast<int32_t*>(g + 4 * M);
    pos_am = g + 4 * M + M * K;
    pos_ov = g + 4 * M + 2 * M * K;
    ibox = g + 4 * M + 3 * M * K;
    grp = reinterpret_cast<int32_t*>(ibox + 4 * M);
    sel = grp + M + 1;
    queue = q;
  }
};

// top-k of a metric row that is v[j] at anchors cand[j] (ascending) and 0 at every other anchor, selected
// exactly as ATen's topk_impl_loop does on the CPU; writes the K selected anchors to sel (in no useful order).
void topk_row(const int32_t* cand, const float* v, int64_t n, int64_t A, int64_t K, Elem* queue, Elem* heap,
              int32_t* sel) {
  TopkGreater comp;
  if (K * 64 <= A) {
    // partial_sort = heap_select: a heap of elements 0..K-1, then every later element that compares greater
    // than the heap top replaces it (pop_heap). Zeros never do, so only the candidates need visiting, in
    // index order.
    int64_t j = 0;
    for (int64_t e = 0; e < K; e++) {
      float x = 0.f;
      if (j < n && cand[j] == e) x = v[j++];
      heap[e] = Elem(x, e);
    }
    std::make_heap(heap, heap + K, comp);
    for (; j < n; j++) {
      const Elem x(v[j], cand[j]);
      if (comp(x, heap[0])) {
        heap[K] = x;
        std::pop_heap(heap, heap + K + 1, comp);
      }
    }
    for (int64_t e = 0; e < K; e++) sel[e] = static_cast<int32_t>(heap[e].second);
  } else {  // nth_element over the whole row
    for (int64_t a = 0; a < A; a++) queue[a] = Elem(0.f, a);
    for (int64_t j = 0; j < n; j++) queue[cand[j]].first = v[j];
    std::nth_element(queue, queue + K - 1, queue + A, comp);
    for (int64_t e = 0; e < K; e++) sel[e] = static_cast<int32_t>(queue[e].second);
  }
}

// position of anchor a in the ascending list cand[0..n), or -1
inline int64_t find_anchor(const int32_t* cand, int64_t n, int64_t a) {
  const int32_t* it = std::lower_bound(cand, cand + n, static_cast<int32_t>(a));
  return (it == cand + n || *it != a) ? -1 : it - cand;
}

// ultralytics 8.4's topk2 filter: each gt keeps the anchors it won (cnt > 0, win == m) only if they are in the
// top-K2 of its row am(m, .) * won(m, .); the others become background (cnt = 0). Uses cand/cam/cov as scratch.
void second_topk(const Problem& P, Workspace& w, Elem* heap) {
  const int64_t A = P.A, M = P.M;
  std::fill(w.grp, w.grp + M + 1, 0);
  for (int64_t a = 0; a < A; a++) {
    if (w.cnt[a] > 0) w.grp[w.win[a] + 1]++;
  }
  for (int64_t m = 0; m < M; m++) w.grp[m + 1] += w.grp[m];
  int32_t* fill = w.pos_n;  // next free slot of each gt's group (pos_n is spent by now)
  std::copy(w.grp, w.grp + M, fill);
  for (int64_t a = 0; a < A; a++) {
    if (w.cnt[a] == 0) continue;
    const int32_t slot = fill[w.win[a]]++;
    w.cand[slot] = static_cast<int32_t>(a);
    w.cam[slot] = w.amw[a];
  }
  int32_t* keep = reinterpret_cast<int32_t*>(w.cov);
  for (int64_t m = 0; m < M; m++) {
    const int64_t off = w.grp[m], n = w.grp[m + 1] - off;
    if (n == 0) continue;
    topk_row(w.cand + off, w.cam + off, n, A, P.K2, w.queue, heap, w.sel);
    std::fill(keep, keep + n, 0);
    for (int64_t e = 0; e < P.K2; e++) {
      const int64_t j = find_anchor(w.cand + off, n, w.sel[e]);
      if (j >= 0) keep[j] = 1;
    }
    for (int64_t j = 0; j < n; j++) {
      if (!keep[j]) w.cnt[w.cand[off + j]] = 0;
    }
  }
}

template <typename scalar_t>
void assign_image(const Problem& P, const AnchorIndex& ix, const scalar_t* sc, int64_t sA, int64_t sC, int64_t b,
                  Workspace& w, Elem* heap, int64_t* out_labels, float* out_bboxes, float* out_scores, bool* out_fg,
                  int64_t* out_idx) {
  const int64_t A = P.A, M = P.M, C = P.C, K = P.K;
  const float* pdb = P.pd + 4 * b * A;
  const float* gtb = P.gt + 4 * b * M;
  const int64_t* labb = P.lab + b * M;
  const bool* valb = P.valid + b * M;
  auto label_col = [&](int64_t m) {  // Python-style index of pd_scores[..., label] (range checked by the caller)
    const int64_t c = labb[m];
    return c < 0 ? c + C : c;
  };

  // atan(w/h) of the predicted and gt boxes: ratios, then one vectorised atan like ATen's kernel
  for (int64_t a = 0; a < A; a++) w.atan_pd[a] = wh_ratio(pdb + 4 * a);
  atan_array(w.atan_pd, w.atan_pd, A);
  for (int64_t m = 0; m < M; m++) w.atan_gt[m] = wh_ratio(gtb + 4 * m);
  atan_array(w.atan_gt, w.atan_gt, M);
  for (int64_t m = 0; m < M; m++) inside_box(gtb + 4 * m, valb[m], P.stride_val, w.ibox + 4 * m);

  // 1. per gt: the anchors inside it, their CIoU and metric, the top-k; padded gts get nothing
  for (int64_t m = 0; m < M; m++) {
    w.pos_n[m] = 0;
    if (!valb[m]) continue;
    const float* g = gtb + 4 * m;
    const int64_t n = gather_inside(P, ix, w.ibox + 4 * m, w.cand);
    if (n == 0) continue;
    const int64_t c = label_col(m);
    for (int64_t j = 0; j < n; j++) {
      const int64_t a = w.cand[j];
      w.cov[j] = ciou_clamped(g, pdb + 4 * a, w.atan_gt[m], w.atan_pd[a], P.alpha84);
      w.cam[j] = score_at(sc, sA, sC, a, c);
    }
    const int64_t base = pow_base(P, b, m);
    const int32_t* at = P.alpha84 ? nullptr : w.cand;  // dense: at (b, m, a); pairs: consecutive
    pow_at(w.cam, w.cam, n, P.alpha, base, at, P.loop);  // bbox_scores.pow(alpha)
    pow_at(w.cov, w.tmp, n, P.beta, base, at, P.loop);   // overlaps.pow(beta)
    for (int64_t j = 0; j < n; j++) w.cam[j] = w.cam[j] * w.tmp[j];
    topk_row(w.cand, w.cam, n, A, K, w.queue, heap, w.sel);
    int32_t npos = 0;
    for (int64_t e = 0; e < K; e++) {  // the selected anchors outside the gt are no positives
      const int64_t j = find_anchor(w.cand, n, w.sel[e]);
      if (j < 0) continue;
      w.pos_a[m * K + npos] = w.cand[j];
      w.pos_am[m * K + npos] = w.cam[j];
      w.pos_ov[m * K + npos] = w.cov[j];
      npos++;
    }
    w.pos_n[m] = npos;
  }

  // 2. claims per anchor (the first claimer's metric/overlap kept for singly claimed anchors)
  std::fill(w.cnt, w.cnt + A, 0);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t j = 0; j < w.pos_n[m]; j++) {
      const int64_t a = w.pos_a[m * K + j];
      if (w.cnt[a]++ == 0) {
        w.win[a] = static_cast<int32_t>(m);
        w.amw[a] = w.pos_am[m * K + j];
        w.ovw[a] = w.pos_ov[m * K + j];
      }
    }
  }

  // 3. anchors claimed by several gts go to argmax over ALL gts of the overlap (first maximum, NaN counts as
  //    the maximum): possibly a gt that did not claim the anchor, or gt 0 when every overlap is 0
  for (int64_t a = 0; a < A; a++) {
    if (w.cnt[a] < 2) continue;
    const float ax = P.anc[2 * a], ay = P.anc[2 * a + 1];
    const float* p = pdb + 4 * a;
    auto ov_of = [&](int64_t m) -> float {
      if (!valb[m] || !inside(w.ibox + 4 * m, ax, ay)) return 0.f;
      return ciou_clamped(gtb + 4 * m, p, w.atan_gt[m], w.atan_pd[a], P.alpha84);
    };
    int64_t best = 0;
    float bv = ov_of(0);
    for (int64_t m = 1; m < M && !isnan_f(bv); m++) {
      const float v = ov_of(m);
      if (isnan_f(v) || v > bv) {
        bv = v;
        best = m;
      }
    }
    float am = 0.f;
    if (valb[best] && inside(w.ibox + 4 * best, ax, ay)) {  // the pair (best, a): its place in the array
      const int64_t pos = pow_base(P, b, best) + (P.alpha84 ? find_anchor(w.cand, gather_inside(
                                                                  P, ix, w.ibox + 4 * best, w.cand), a) : a);
      float s = score_at(sc, sA, sC, a, label_col(best)), pw = bv;
      pow_at(&s, &s, 1, P.alpha, pos, nullptr, P.loop);
      pow_at(&pw, &pw, 1, P.beta, pos, nullptr, P.loop);
      am = s * pw;
    }
    w.win[a] = static_cast<int32_t>(best);
    w.amw[a] = am;
    w.ovw[a] = bv;
  }

  if (P.K2 > 0 && P.K2 != K) second_topk(P, w, heap);

  // 4. per gt: max metric and max overlap over its positives (amax over anchors includes the zeros)
  std::fill(w.pal, w.pal + M, 0.f);
  std::fill(w.pov, w.pov + M, 0.f);
  for (int64_t a = 0; a < A; a++) {
    if (w.cnt[a] == 0) continue;
    const int32_t g = w.win[a];
    w.pal[g] = amax2(w.pal[g], w.amw[a]);
    w.pov[g] = amax2(w.pov[g], w.ovw[a]);
  }

  // 5. targets; background anchors point at gt 0 (argmax of an all-zero column)
  for (int64_t a = 0; a < A; a++) {
    const int64_t i = b * A + a;
    const bool fg = w.cnt[a] > 0;
    const int64_t g = fg ? w.win[a] : 0;
    const int64_t lab = std::max<int64_t>(labb[g], 0);
    out_idx[i] = g;
    out_fg[i] = fg;
    out_labels[i] = lab;
    std::memcpy(out_bboxes + 4 * i, gtb + 4 * g, 4 * sizeof(float));
    float* row = out_scores + i * C;
    std::memset(row, 0, C * sizeof(float));
    if (fg) {
      // norm = amax over gts of (align_metric * pos_overlaps / (pos_align_metrics + eps)): only the winner's
      // term can be non-zero, the others are 0 (hence max(0, term) when M > 1; NaN propagates)
      const float term = (w.amw[a] * w.pov[g]) / (w.pal[g] + P.eps);
      row[lab] = M > 1 ? amax2(0.f, term) : term;
    }
  }
}

template <typename scalar_t>
void assign_cpu_impl(Problem P, const scalar_t* scores, int64_t sB, int64_t sA, int64_t sC,
                     int64_t* out_labels, float* out_bboxes, float* out_scores, bool* out_fg, int64_t* out_idx) {
  const int64_t B = P.B, A = P.A, M = P.M, K = P.K, Kmax = std::max(P.K, P.K2);
  // One parallel region over the images (a region per phase costs a lot when the cores are shared).
  const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B)));
  // Scratch through the c10 CPU allocator (visible to torch's memory profiler): per thread O(A + M*K).
  const int64_t words = Workspace::words(A, M, K, Kmax);
  at::Tensor ws_t = at::empty({nthreads, words}, at::TensorOptions().dtype(at::kFloat));
  const bool full_queue = !(Kmax * 64 <= A);
  at::Tensor queue_t = full_queue ? at::empty({nthreads, A * static_cast<int64_t>(sizeof(Elem))}, at::kByte)
                                  : at::Tensor();
  at::Tensor heap_t = at::empty({nthreads, (Kmax + 1) * static_cast<int64_t>(sizeof(Elem))}, at::kByte);
  AnchorIndex ix;
  build_anchor_index(P.anc, A, ix);
  at::Tensor first_t;
  if (P.alpha84) {  // the pairs per (image, gt), then each one's first position in the flat pair array
    first_t = at::zeros({B * M + 1}, at::TensorOptions().dtype(at::kLong));
    int64_t* first = first_t.data_ptr<int64_t>();
    at::parallel_for(0, B, (B + nthreads - 1) / nthreads, [&](int64_t lo, int64_t hi) {
      float box[4];
      for (int64_t i = lo * M; i < hi * M; i++) {
        if (!P.valid[i]) continue;
        inside_box(P.gt + 4 * i, true, P.stride_val, box);
        first[i + 1] = gather_inside(P, ix, box, nullptr);
      }
    });
    for (int64_t i = 0; i < B * M; i++) first[i + 1] += first[i];
    P.loop = ref_loop(first[B * M]);
    P.first = first;
  } else {
    P.loop = ref_loop(B * M * A);
  }

  at::parallel_for(0, B, (B + nthreads - 1) / nthreads, [&](int64_t lo, int64_t hi) {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < nthreads, "task_aligned_assign: unexpected thread id ", tid);
    Workspace w(ws_t.data_ptr<float>() + tid * words, A, M, K,
                full_queue ? reinterpret_cast<Elem*>(queue_t.data_ptr<uint8_t>()) + tid * A : nullptr);
    Elem* heap = reinterpret_cast<Elem*>(heap_t.data_ptr<uint8_t>()) + tid * (Kmax + 1);
    for (int64_t b = lo; b < hi; b++) {
      assign_image(P, ix, scores + b * sB, sA, sC, b, w, heap, out_labels, out_bboxes, out_scores, out_fg, out_idx);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> task_aligned_assign_cpu(
    const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
    int64_t num_classes, double alpha, double beta, double eps, double stride_val, int64_t topk2, bool ciou84) {
  auto [pd, anc, gt, lab, valid] = check_and_prepare(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                                                     topk, num_classes, stride_val, topk2);
  const int64_t B = pd_scores.size(0), A = pd_scores.size(1), C = pd_scores.size(2), M = gt.size(1);
  TORCH_CHECK(M >= 1, "task_aligned_assign needs at least one gt slot (M == 0 is handled in Python)");
  check_labels(lab, C);
  auto [labels, bboxes, scores, fg, idx] = empty_outputs(pd_scores, B, A, C);
  if (B == 0 || A == 0) return {labels, bboxes, scores, fg, idx};

  Problem P{B, A, M, C, topk, topk2, static_cast<float>(stride_val), ciou84, alpha, beta, static_cast<float>(eps),
            anc.data_ptr<float>(), pd.data_ptr<float>(), gt.data_ptr<float>(), lab.data_ptr<int64_t>(),
            valid.data_ptr<bool>()};
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
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int num_classes, float alpha, float beta, float eps, "
      "float stride_val=0., int topk2=0, bool ciou84=False) -> "
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
