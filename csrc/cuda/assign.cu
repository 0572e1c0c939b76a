// Fused, memory-bounded task-aligned assignment: CUDA implementation of yolov10_kernels::task_aligned_assign
// (schema and semantics in ../assign.cpp). Kernels, nothing of shape (B, M, A):
//   0. per box: atan(w/h) of the predictions and gts, and each gt's inside-test box (stride_val);
//   1. one block per (image, gt): every thread scans a strided slice of the anchors, keeps the anchors inside
//      the gt with a non-zero align metric in a private top-k, the block merges them into the gt's top-k and
//      claims those anchors (per-anchor claim counter + claimer);
//   2. one thread per anchor: resolves anchors claimed by several gts (argmax of CIoU over all gts) and
//      computes the winner's metric/overlap;
//   (2b. with topk2: one block per (image, gt): top-topk2 of the metrics of the anchors the gt won; the others
//      become background;)
//   3. one thread per anchor: per-gt maxima of metric/overlap (atomicMax on the float bits);
//   4. one thread per anchor: target gt index, fg mask, label, box and the normalised score;
//   5. the (B, A, nc) score map.
// Extra memory: O(B*A + B*M) words. No host sync (labels are checked by a device assert), so the op can be
// captured in a CUDA graph.
//
// Parity with the reference on CUDA: each elementwise op is rounded separately (the __f*_rn intrinsics, which
// are never contracted into FMAs and stay IEEE under --use_fast_math), atan/pow come from libdevice as
// torch's atanf/powf do (__nv_* bypasses fast-math substitution; with -ftz only denormals differ), and the
// top-k breaks ties like torch.topk on CUDA (radix select: all values above the k-th, then the lowest indices
// equal to it), with the same float -> radix key mapping.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../assign.h"

extern "C" __device__ float __nv_powf(float, float);
extern "C" __device__ float __nv_atanf(float);

namespace yolov10_kernels {
namespace {

constexpr int kMaxTopk = 32;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kIouEps = 1e-7f;
constexpr float kInsideEps = 1e-9f;
constexpr uint32_t kZeroKey = 0x80000000u;  // radix key of +0.0f

struct Consts {
  float one_plus_eps;  // (1 + 1e-7) as a float
  float v_coef;        // 4 / pi^2 as a float
};

__device__ __forceinline__ bool nan_(float x) { return x != x; }
__device__ __forceinline__ float t_min(float a, float b) { return nan_(a) ? a : (nan_(b) ? b : (b < a ? b : a)); }
__device__ __forceinline__ float t_max(float a, float b) { return nan_(a) ? a : (nan_(b) ? b : (b > a ? b : a)); }
__device__ __forceinline__ float t_clamp0(float a) { return nan_(a) ? a : (a < 0.f ? 0.f : a); }

// x.pow(e) as torch's CUDA pow_tensor_scalar_kernel computes it (special-cased exponents, else powf)
__device__ __forceinline__ float pow_scalar(float x, double e) {
  if (e == 0.0) return 1.f;
  if (e == 1.0) return x;
  if (e == 0.5) return __fsqrt_rn(x);
  if (e == 2.0) return __fmul_rn(x, x);
  if (e == 3.0) return __fmul_rn(__fmul_rn(x, x), x);
  if (e == -0.5) return rsqrtf(x);
  if (e == -1.0) return __fdiv_rn(1.f, x);
  if (e == -2.0) return __fdiv_rn(1.f, __fmul_rn(x, x));
  return __nv_powf(x, static_cast<float>(e));
}

__device__ __forceinline__ float wh_ratio(const float* b) {
  return __fdiv_rn(__fsub_rn(b[2], b[0]), __fadd_rn(__fsub_rn(b[3], b[1]), kIouEps));
}

// clamp(CIoU(gt, pd), 0) in bbox_iou's float32 op order
__device__ __forceinline__ float ciou_clamped(const float* g, const float* p, float atan_g, float atan_p, bool alpha84,
                                              const Consts& k) {
  const float w1 = __fsub_rn(g[2], g[0]), h1 = __fadd_rn(__fsub_rn(g[3], g[1]), kIouEps);
  const float w2 = __fsub_rn(p[2], p[0]), h2 = __fadd_rn(__fsub_rn(p[3], p[1]), kIouEps);
  const float iw = t_clamp0(__fsub_rn(t_min(g[2], p[2]), t_max(g[0], p[0])));
  const float ih = t_clamp0(__fsub_rn(t_min(g[3], p[3]), t_max(g[1], p[1])));
  const float inter = __fmul_rn(iw, ih);
  const float uni = __fadd_rn(__fsub_rn(__fadd_rn(__fmul_rn(w1, h1), __fmul_rn(w2, h2)), inter), kIouEps);
  const float iou = __fdiv_rn(inter, uni);
  const float cw = __fsub_rn(t_max(g[2], p[2]), t_min(g[0], p[0]));
  const float ch = __fsub_rn(t_max(g[3], p[3]), t_min(g[1], p[1]));
  const float c2 = __fadd_rn(__fadd_rn(__fmul_rn(cw, cw), __fmul_rn(ch, ch)), kIouEps);
  const float dx = __fsub_rn(__fsub_rn(__fadd_rn(p[0], p[2]), g[0]), g[2]);
  const float dy = __fsub_rn(__fsub_rn(__fadd_rn(p[1], p[3]), g[1]), g[3]);
  const float rho2 = __fdiv_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), 4.f);
  const float d = __fsub_rn(atan_p, atan_g);
  const float v = __fmul_rn(k.v_coef, __fmul_rn(d, d));
  const float alpha = alpha84 ? __fdiv_rn(v, __fadd_rn(__fadd_rn(__fsub_rn(1.f, iou), v), kIouEps))
                              : __fdiv_rn(v, __fadd_rn(__fsub_rn(v, iou), k.one_plus_eps));
  return t_clamp0(__fsub_rn(iou, __fadd_rn(__fdiv_rn(rho2, c2), __fmul_rn(v, alpha))));
}

__device__ __forceinline__ bool inside(const float* g, float ax, float ay) {
  return __fsub_rn(ax, g[0]) > kInsideEps && __fsub_rn(ay, g[1]) > kInsideEps &&
         __fsub_rn(g[2], ax) > kInsideEps && __fsub_rn(g[3], ay) > kInsideEps;
}

// torch's radix-select key: larger key = larger value, NaN largest, -0.0 just below +0.0
__device__ __forceinline__ uint32_t radix_key(float v) {
  const uint32_t x = __float_as_uint(v);
  const uint32_t mask = (x & 0x80000000u) ? 0xffffffffu : 0x80000000u;
  return (v == v) ? (x ^ mask) : 0xffffffffu;
}

// bits of a non-negative float (or NaN) whose unsigned order is the float order; -0.0 -> +0.0
__device__ __forceinline__ unsigned int max_bits(float v) { return v == 0.f ? 0u : __float_as_uint(v); }

struct Inputs {
  const float* pd;      // (B, A, 4)
  const float* ibox;    // (B, M, 4) boxes of the inside test
  const float* anc;     // (A, 2)
  const float* gt;      // (B, M, 4)
  const int64_t* lab;   // (B, M)
  const bool* valid;    // (B, M)
  const float* atan_pd; // (B, A)
  const float* atan_gt; // (B, M)
  int64_t B, A, M, C;
  int K;
  int K2;               // second top-k (0 = none)
  float stride_val;     // minimum gt side of the inside test (0 = the gt as is)
  bool alpha84;         // CIoU alpha in ultralytics 8.4's op order
  double alpha, beta;
  float eps;
  Consts k;
};

template <typename scalar_t>
__device__ __forceinline__ float align_metric(const Inputs& in, const scalar_t* scores, int64_t sB, int64_t sA,
                                              int64_t sC, int64_t b, int64_t a, int64_t bm, float ov) {
  int64_t c = in.lab[bm];
  if (c < 0) c += in.C;
  c = c < 0 ? 0 : (c >= in.C ? in.C - 1 : c);  // out-of-range labels trip the device assert; stay in bounds
  const float s = static_cast<float>(scores[b * sB + a * sA + c * sC]);
  return __fmul_rn(pow_scalar(s, in.alpha), pow_scalar(ov, in.beta));
}

__global__ void atan_kernel(const float* __restrict__ boxes, float* __restrict__ out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __nv_atanf(wh_ratio(boxes + 4 * i));
}

// the inside-test box: the gt, or (stride_val > 0, ultralytics 8.4) xyxy2xywh -> valid sides below stride_val
// raised to it -> xywh2xyxy, each op rounded as torch's
__global__ void inside_box_kernel(const float* __restrict__ gt, const bool* __restrict__ valid, float stride_val,
                                  float* __restrict__ out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float* g = gt + 4 * i;
  float* o = out + 4 * i;
  if (!(stride_val > 0.f)) {
    for (int j = 0; j < 4; j++) o[j] = g[j];
    return;
  }
  const float xc = __fdiv_rn(__fadd_rn(g[0], g[2]), 2.f), yc = __fdiv_rn(__fadd_rn(g[1], g[3]), 2.f);
  float w = __fsub_rn(g[2], g[0]), h = __fsub_rn(g[3], g[1]);
  if (valid[i] && w < stride_val) w = stride_val;
  if (valid[i] && h < stride_val) h = stride_val;
  const float hw = __fdiv_rn(w, 2.f), hh = __fdiv_rn(h, 2.f);
  o[0] = __fsub_rn(xc, hw);
  o[1] = __fsub_rn(yc, hh);
  o[2] = __fadd_rn(xc, hw);
  o[3] = __fadd_rn(yc, hh);
}

__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v, unsigned long long* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  __syncthreads();  // red may still be read by the previous call
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = red[0];
  for (int i = 1; i < kWarps; i++) v = red[i] > v ? red[i] : v;
  return v;
}

// a thread's private top-k (descending radix key, then ascending index, in one u64); only values > +0
__device__ __forceinline__ void push_topk(unsigned long long* best, int& nb, int K, float v, int64_t a) {
  const uint32_t key = radix_key(v);
  if (key <= kZeroKey) return;
  const unsigned long long kv =
      (static_cast<unsigned long long>(key) << 32) | static_cast<uint32_t>(0xffffffffu - static_cast<uint32_t>(a));
  if (nb == K && kv <= best[K - 1]) return;
  int pos = nb < K ? nb++ : K - 1;
  while (pos > 0 && best[pos - 1] < kv) {
    best[pos] = best[pos - 1];
    pos--;
  }
  best[pos] = kv;
}

// merges the threads' private top-k lists: K rounds of a block-wide max over their heads; thread 0 gets the
// selected entries in sel; returns their count (all threads)
__device__ __forceinline__ int merge_topk(const unsigned long long* best, int nb, int K, unsigned long long* red,
                                          unsigned long long* sel) {
  int head = 0, nsel = 0;
  for (int r = 0; r < K; r++) {
    const unsigned long long mine = head < nb ? best[head] : 0ull;
    const unsigned long long mx = block_max_u64(mine, red);
    if (mx == 0ull) break;
    if (mine == mx) head++;
    if (threadIdx.x == 0) sel[r] = mx;
    nsel++;
  }
  return nsel;
}

__device__ __forceinline__ int64_t sel_anchor(unsigned long long e) {
  return 0xffffffffu - static_cast<uint32_t>(e & 0xffffffffull);
}

__device__ __forceinline__ bool selected(const unsigned long long* sel, int nsel, int64_t a) {
  bool taken = false;
  for (int r = 0; r < nsel; r++) taken |= sel_anchor(sel[r]) == a;
  return taken;
}

// 1. per (image, gt): top-k of the align metric over the anchors; claims the positives
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gt_topk_kernel(Inputs in, const scalar_t* __restrict__ scores,
                                                           int64_t sB, int64_t sA, int64_t sC,
                                                           int* __restrict__ cnt, int* __restrict__ claim) {
  __shared__ unsigned long long red[kWarps];
  __shared__ unsigned long long sel[kMaxTopk];
  const int64_t bm = blockIdx.x;
  if (!in.valid[bm]) return;  // padded gt: never positive (uniform over the block)
  const int64_t b = bm / in.M, m = bm % in.M;
  const int K = in.K;
  float g[4], ib[4];
  for (int j = 0; j < 4; j++) g[j] = in.gt[4 * bm + j];
  for (int j = 0; j < 4; j++) ib[j] = in.ibox[4 * bm + j];
  const float ag = in.atan_gt[bm];
  const float* pdb = in.pd + 4 * b * in.A;
  const float* apb = in.atan_pd + b * in.A;

  // private top-k of (radix key desc, index asc) packed into one descending u64; only values > +0
  unsigned long long best[kMaxTopk];
  int nb = 0;
  for (int64_t a = threadIdx.x; a < in.A; a += blockDim.x) {
    if (!inside(ib, in.anc[2 * a], in.anc[2 * a + 1])) continue;
    const float ov = ciou_clamped(g, pdb + 4 * a, ag, apb[a], in.alpha84, in.k);
    const float am = align_metric(in, scores, sB, sA, sC, b, a, bm, ov);
    push_topk(best, nb, K, am, a);
  }
  const int nsel = merge_topk(best, nb, K, red, sel);
  if (threadIdx.x != 0) return;
  for (int r = 0; r < nsel; r++) {
    const int64_t a = sel_anchor(sel[r]);
    atomicAdd(cnt + b * in.A + a, 1);
    atomicExch(claim + b * in.A + a, static_cast<int>(m));
  }
  // fewer than K non-zero metrics: torch.topk fills with the lowest-index zeros; those inside the gt are
  // positives too (with metric 0)
  int need = K - nsel;
  for (int64_t a = 0; a < in.A && need > 0; a++) {
    if (selected(sel, nsel, a)) continue;
    need--;
    if (inside(ib, in.anc[2 * a], in.anc[2 * a + 1])) {
      atomicAdd(cnt + b * in.A + a, 1);
      atomicExch(claim + b * in.A + a, static_cast<int>(m));
    }
  }
}

// 2. per anchor: winner gt (argmax of overlaps over all gts if claimed twice or more), its metric/overlap
template <typename scalar_t>
__global__ void resolve_kernel(Inputs in, const scalar_t* __restrict__ scores, int64_t sB, int64_t sA, int64_t sC,
                               const int* __restrict__ cnt, const int* __restrict__ claim, int* __restrict__ win,
                               float* __restrict__ amw, float* __restrict__ ovw) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= in.B * in.A) return;
  const int n = cnt[i];
  if (n == 0) return;
  const int64_t b = i / in.A, a = i % in.A;
  const float ax = in.anc[2 * a], ay = in.anc[2 * a + 1];
  const float* p = in.pd + 4 * i;
  const float atp = in.atan_pd[i];
  auto ov_of = [&](int64_t m) -> float {
    const int64_t bm = b * in.M + m;
    if (!in.valid[bm] || !inside(in.ibox + 4 * bm, ax, ay)) return 0.f;
    return ciou_clamped(in.gt + 4 * bm, p, in.atan_gt[bm], atp, in.alpha84, in.k);
  };
  int64_t w;
  float ov;
  if (n == 1) {
    w = claim[i];
    ov = ov_of(w);
  } else {
    w = 0;
    ov = ov_of(0);
    for (int64_t m = 1; m < in.M && !nan_(ov); m++) {
      const float v = ov_of(m);
      if (nan_(v) || v > ov) {
        ov = v;
        w = m;
      }
    }
  }
  const int64_t bm = b * in.M + w;
  const bool pair = in.valid[bm] && inside(in.ibox + 4 * bm, ax, ay);
  win[i] = static_cast<int>(w);
  amw[i] = pair ? align_metric(in, scores, sB, sA, sC, b, a, bm, ov) : 0.f;
  ovw[i] = ov;
}

// 2b. ultralytics 8.4's topk2: per (image, gt), the anchors it won stay foreground only if they are in the
//     top-K2 of its row amw * won (torch.topk over all anchors: zeros filled in by lowest index). A block only
//     clears cnt of anchors its gt won; other blocks read those entries only to see they are not theirs.
__global__ void __launch_bounds__(kThreads) topk2_kernel(Inputs in, int* cnt, const int* __restrict__ win,
                                                         const float* __restrict__ amw) {
  __shared__ unsigned long long red[kWarps];
  __shared__ unsigned long long sel[kMaxTopk];
  const int64_t bm = blockIdx.x, b = bm / in.M, m = bm % in.M;
  const int K = in.K2;
  int* cb = cnt + b * in.A;
  const int* wb = win + b * in.A;
  const float* vb = amw + b * in.A;
  unsigned long long best[kMaxTopk];
  int nb = 0;
  for (int64_t a = threadIdx.x; a < in.A; a += blockDim.x) {
    if (cb[a] > 0 && wb[a] == m) push_topk(best, nb, K, vb[a], a);
  }
  const int nsel = merge_topk(best, nb, K, red, sel);
  __syncthreads();  // every thread has read cnt before thread 0 clears entries
  if (threadIdx.x != 0) return;
  int need = K - nsel;  // lowest-index zeros complete the top-K2
  int64_t zero_end = 0;
  for (; zero_end < in.A && need > 0; zero_end++) {
    if (!selected(sel, nsel, zero_end)) need--;
  }
  for (int64_t a = 0; a < in.A; a++) {
    if (cb[a] == 0 || wb[a] != m) continue;
    if (selected(sel, nsel, a) || a < zero_end) continue;
    cb[a] = 0;
  }
}

// 3. per foreground anchor: its winner's maxima of metric and overlap
__global__ void stats_kernel(int64_t n, int64_t A, int64_t M, const int* __restrict__ cnt, const int* __restrict__ win,
                             const float* __restrict__ amw, const float* __restrict__ ovw, unsigned int* __restrict__ pal,
                             unsigned int* __restrict__ pov) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n || cnt[i] == 0) return;
  const int64_t bm = (i / A) * M + win[i];
  atomicMax(pal + bm, max_bits(amw[i]));
  atomicMax(pov + bm, max_bits(ovw[i]));
}

// 4. per anchor: outputs except the score map; the normalised score goes to norm (aliases amw)
__global__ void targets_kernel(Inputs in, const int* __restrict__ cnt, const int* __restrict__ win,
                               float* __restrict__ amw_norm, const unsigned int* __restrict__ pal,
                               const unsigned int* __restrict__ pov, int64_t* __restrict__ out_labels,
                               float* __restrict__ out_bboxes, bool* __restrict__ out_fg, int64_t* __restrict__ out_idx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= in.B * in.A) return;
  const int64_t b = i / in.A;
  const bool fg = cnt[i] > 0;
  const int64_t w = fg ? win[i] : 0;
  const int64_t bm = b * in.M + w;
  const int64_t lab = in.lab[bm] > 0 ? in.lab[bm] : 0;
  out_idx[i] = w;
  out_fg[i] = fg;
  out_labels[i] = lab;
  for (int j = 0; j < 4; j++) out_bboxes[4 * i + j] = in.gt[4 * bm + j];
  float norm = 0.f;
  if (fg) {
    const float term = __fdiv_rn(__fmul_rn(amw_norm[i], __uint_as_float(pov[bm])),
                                 __fadd_rn(__uint_as_float(pal[bm]), in.eps));
    norm = (in.M > 1 && !nan_(term)) ? (term > 0.f ? term : 0.f) : term;
  }
  amw_norm[i] = norm;
}

// 5. the score map: one-hot(label) * norm on foreground anchors
__global__ void scores_kernel(const bool* __restrict__ fg, const int64_t* __restrict__ labels,
                              const float* __restrict__ norm, float* __restrict__ out, int64_t n, int64_t C) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / C, c = e % C;
    out[e] = (fg[i] && labels[i] == c) ? norm[i] : 0.f;
  }
}

inline unsigned int blocks_for(int64_t n, int threads) { return static_cast<unsigned int>((n + threads - 1) / threads); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> task_aligned_assign_cuda(
    const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
    int64_t num_classes, double alpha, double beta, double eps, double stride_val, int64_t topk2, bool ciou84) {
  c10::cuda::CUDAGuard guard(pd_scores.device());
  auto [pd, anc, gt, lab, valid] = check_and_prepare(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                                                     topk, num_classes, stride_val, topk2);
  TORCH_CHECK(topk <= kMaxTopk && topk2 <= kMaxTopk, "task_aligned_assign (CUDA): topk and topk2 must be <= ",
              kMaxTopk, ", got ", topk, " and ", topk2);
  const int64_t B = pd_scores.size(0), A = pd_scores.size(1), C = pd_scores.size(2), M = gt.size(1);
  TORCH_CHECK(M >= 1, "task_aligned_assign needs at least one gt slot (M == 0 is handled in Python)");
  TORCH_CHECK(A < (int64_t{1} << 31) && M < (int64_t{1} << 31), "task_aligned_assign: too many anchors or gts");
  for (const at::Tensor* t : {&pd, &anc, &gt, &lab, &valid}) {
    TORCH_CHECK(t->device() == pd_scores.device(), "task_aligned_assign: all inputs must be on ", pd_scores.device());
  }
  check_labels(lab, C);
  auto opts = pd_scores.options();
  auto [labels, bboxes, scores, fg, idx] = empty_outputs(pd_scores, B, A, C);
  if (B == 0 || A == 0) return {labels, bboxes, scores, fg, idx};

  auto f32 = opts.dtype(at::kFloat);
  auto i32 = opts.dtype(at::kInt);
  at::Tensor atan_pd = at::empty({B * A}, f32);
  at::Tensor atan_gt = at::empty({B * M}, f32);
  at::Tensor cnt = at::zeros({B * A}, i32);
  at::Tensor claim = at::empty({B * A}, i32);
  at::Tensor win = at::empty({B * A}, i32);
  at::Tensor amw = at::empty({B * A}, f32);
  at::Tensor ovw = at::empty({B * A}, f32);
  at::Tensor ibox = at::empty({B * M, 4}, f32);
  at::Tensor stats = at::zeros({2, B * M}, i32);  // float bits of the per-gt max metric / max overlap

  Inputs in;
  in.pd = pd.data_ptr<float>();
  in.ibox = ibox.data_ptr<float>();
  in.anc = anc.data_ptr<float>();
  in.gt = gt.data_ptr<float>();
  in.lab = lab.data_ptr<int64_t>();
  in.valid = valid.data_ptr<bool>();
  in.atan_pd = atan_pd.data_ptr<float>();
  in.atan_gt = atan_gt.data_ptr<float>();
  in.B = B;
  in.A = A;
  in.M = M;
  in.C = C;
  in.K = static_cast<int>(topk);
  in.K2 = static_cast<int>(topk2);
  in.stride_val = static_cast<float>(stride_val);
  in.alpha84 = ciou84;
  in.alpha = alpha;
  in.beta = beta;
  in.eps = static_cast<float>(eps);
  in.k.one_plus_eps = static_cast<float>(1.0 + 1e-7);
  in.k.v_coef = static_cast<float>(4.0 / (M_PI * M_PI));

  auto stream = at::cuda::getCurrentCUDAStream();
  atan_kernel<<<blocks_for(B * A, 256), 256, 0, stream>>>(in.pd, atan_pd.data_ptr<float>(), B * A);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  atan_kernel<<<blocks_for(B * M, 256), 256, 0, stream>>>(in.gt, atan_gt.data_ptr<float>(), B * M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  inside_box_kernel<<<blocks_for(B * M, 256), 256, 0, stream>>>(in.gt, in.valid, in.stride_val,
                                                                 ibox.data_ptr<float>(), B * M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  unsigned int* pal = reinterpret_cast<unsigned int*>(stats.data_ptr<int>());
  unsigned int* pov = pal + B * M;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pd_scores.scalar_type(), "task_aligned_assign_cuda", [&] {
    const scalar_t* sp = pd_scores.data_ptr<scalar_t>();
    const int64_t sB = pd_scores.stride(0), sA = pd_scores.stride(1), sC = pd_scores.stride(2);
    gt_topk_kernel<scalar_t><<<static_cast<unsigned int>(B * M), kThreads, 0, stream>>>(
        in, sp, sB, sA, sC, cnt.data_ptr<int>(), claim.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    resolve_kernel<scalar_t><<<blocks_for(B * A, 256), 256, 0, stream>>>(
        in, sp, sB, sA, sC, cnt.data_ptr<int>(), claim.data_ptr<int>(), win.data_ptr<int>(), amw.data_ptr<float>(),
        ovw.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (topk2 > 0 && topk2 != topk) {
    topk2_kernel<<<static_cast<unsigned int>(B * M), kThreads, 0, stream>>>(in, cnt.data_ptr<int>(),
                                                                            win.data_ptr<int>(), amw.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  stats_kernel<<<blocks_for(B * A, 256), 256, 0, stream>>>(B * A, A, M, cnt.data_ptr<int>(), win.data_ptr<int>(),
                                                           amw.data_ptr<float>(), ovw.data_ptr<float>(), pal, pov);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  targets_kernel<<<blocks_for(B * A, 256), 256, 0, stream>>>(
      in, cnt.data_ptr<int>(), win.data_ptr<int>(), amw.data_ptr<float>(), pal, pov, labels.data_ptr<int64_t>(),
      bboxes.data_ptr<float>(), fg.data_ptr<bool>(), idx.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t n = B * A * C;
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(blocks_for(n, 256), 65535));
  scores_kernel<<<grid, 256, 0, stream>>>(fg.data_ptr<bool>(), labels.data_ptr<int64_t>(), amw.data_ptr<float>(),
                                          scores.data_ptr<float>(), n, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {labels, bboxes, scores, fg, idx};
}

}  // namespace
}  // namespace yolov10_kernels

TORCH_LIBRARY_IMPL(yolov10_kernels, CUDA, m) {
  m.impl("task_aligned_assign", &yolov10_kernels::task_aligned_assign_cuda);
}
