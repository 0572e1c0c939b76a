// Shared by the CPU (assign.cpp) and CUDA (cuda/assign.cu) implementations of
// yolov10_kernels::task_aligned_assign: argument checks and the float32 views of the small inputs.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace yolov10_kernels {

// Checks shapes/dtypes and returns float32 contiguous (pd_bboxes, anc_points, gt_bboxes) and contiguous
// (gt_labels int64 (B, M), mask_gt bool (B, M)). pd_scores is read in place (any float dtype, any strides).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> check_and_prepare(
    const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
    int64_t num_classes, double stride_val, int64_t topk2) {
  TORCH_CHECK(pd_scores.dim() == 3, "pd_scores must be (B, A, num_classes), got ", pd_scores.sizes());
  const int64_t B = pd_scores.size(0), A = pd_scores.size(1), C = pd_scores.size(2);
  TORCH_CHECK(C == num_classes, "pd_scores has ", C, " classes but num_classes=", num_classes);
  TORCH_CHECK(pd_bboxes.dim() == 3 && pd_bboxes.size(0) == B && pd_bboxes.size(1) == A && pd_bboxes.size(2) == 4,
              "pd_bboxes must be (B, A, 4), got ", pd_bboxes.sizes());
  TORCH_CHECK(anc_points.dim() == 2 && anc_points.size(0) == A && anc_points.size(1) == 2,
              "anc_points must be (A, 2), got ", anc_points.sizes());
  TORCH_CHECK(gt_bboxes.dim() == 3 && gt_bboxes.size(0) == B && gt_bboxes.size(2) == 4,
              "gt_bboxes must be (B, M, 4), got ", gt_bboxes.sizes());
  const int64_t M = gt_bboxes.size(1);
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == B && gt_labels.size(1) == M &&
                  gt_labels.scalar_type() == at::kLong,
              "gt_labels must be an int64 (B, M) tensor, got ", gt_labels.sizes(), " ", gt_labels.scalar_type());
  TORCH_CHECK(mask_gt.dim() == 2 && mask_gt.size(0) == B && mask_gt.size(1) == M &&
                  mask_gt.scalar_type() == at::kBool,
              "mask_gt must be a bool (B, M) tensor, got ", mask_gt.sizes(), " ", mask_gt.scalar_type());
  TORCH_CHECK(topk >= 1, "topk must be >= 1, got ", topk);
  TORCH_CHECK(topk <= A, "topk (", topk, ") must not exceed the number of anchors (", A, ")");
  TORCH_CHECK(topk2 >= 0 && topk2 <= A, "topk2 must lie in [0, ", A, "] (0 = no second top-k), got ", topk2);
  TORCH_CHECK(std::isfinite(stride_val) && stride_val >= 0,
              "stride_val must be a finite number >= 0 (0 = no minimum gt side), got ", stride_val);
  TORCH_CHECK(at::isFloatingType(pd_scores.scalar_type()) && at::isFloatingType(pd_bboxes.scalar_type()) &&
                  at::isFloatingType(gt_bboxes.scalar_type()) && at::isFloatingType(anc_points.scalar_type()),
              "task_aligned_assign: scores and boxes must be floating point");
  return {pd_bboxes.to(at::kFloat).contiguous(), anc_points.to(at::kFloat).contiguous(),
          gt_bboxes.to(at::kFloat).contiguous(), gt_labels.contiguous(), mask_gt.contiguous()};
}

// Labels index pd_scores[..., label] (Python-style, negatives from the end) and the one-hot targets after
// clamp(0): the reference fails on anything outside [-C, C), so does this op, with a clear message. On the CPU
// the values are read directly; on CUDA an asynchronous device assert does the check, so that the op makes no
// host sync and can be captured in a CUDA graph (the kernels also clamp the label they index with).
inline void check_labels(const at::Tensor& labels, int64_t C) {
  if (labels.numel() == 0) return;
  if (labels.is_cuda()) {
    at::_assert_async(at::logical_and(labels >= -C, labels < C).all(),
                      "task_aligned_assign: gt_labels must lie in [-num_classes, num_classes)");
    return;
  }
  const int64_t* p = labels.const_data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(p, p + labels.numel());
  TORCH_CHECK(*lo >= -C && *hi < C, "task_aligned_assign: gt_labels must lie in [", -C, ", ", C,
              ") (num_classes=", C, "), got values in [", *lo, ", ", *hi, "]");
}

// The five outputs (labels, bboxes, scores, fg_mask, gt index), allocated alike by the CPU and CUDA ops.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_outputs(const at::Tensor& like,
                                                                                            int64_t B, int64_t A,
                                                                                            int64_t C) {
  auto opts = like.options();
  return {at::empty({B, A}, opts.dtype(at::kLong)), at::empty({B, A, 4}, opts.dtype(at::kFloat)),
          at::empty({B, A, C}, opts.dtype(at::kFloat)), at::empty({B, A}, opts.dtype(at::kBool)),
          at::empty({B, A}, opts.dtype(at::kLong))};
}

}  // namespace yolov10_kernels
