// Batch norm's training step as a torch operator whose autograd node is C++.
//
// Why: on small inputs (LeNet's (256, 120)) a training step of the batch-norm layer is
// bound by per-call overhead, not arithmetic. The Python autograd.Function path costs a
// Python forward, a Python backward and two ctypes calls around about 10 us of kernel;
// here the node and both kernel calls are C++, and Python makes one operator call.
//
// What: `torch.ops.bnlab_kernels.batch_norm_train` (x, weight, bias, eps, running_mean,
// running_var, num_batches_tracked, factor) -> y, or None for a call it does not take
// (`takes`: the caller then runs the Python path), the same computation as
// bnlab.autograd's FastBatchNormFunction: the forward and backward kernels of
// bn_kernels.cpp, whose entry points Python hands over once (`bind`) from the ctypes
// library it loaded, so this file holds no arithmetic and needs no -march flags; the
// arguments are packed in the parameter order of bn_kernels.cpp's train_forward and
// train_backward (its call_packed; Python's _PACK; a test compares the two paths bit for
// bit).
// A backward that autograd records (create_graph=True), or whose grad_y the kernel does not
// take (strides, dtype), calls `bnlab_kernels::batch_norm_train_backward`, which
// bnlab.autograd implements in Python with torch ops (differentiable), as the Python
// Function's backward does. Built at first use against the installed torch (build.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <optional>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Kernel = void (*)(const void*);

// The kernels' entry points, index 0 float32, 1 float64 (set once by `bind`).
std::atomic<Kernel> forward_kernel[2] = {nullptr, nullptr};
std::atomic<Kernel> backward_kernel[2] = {nullptr, nullptr};

union Field {  // one 8-byte field of a packed argument buffer
  const void* p;
  int64_t q;
  double d;
};

Field ptr(const Tensor& t) {
  Field f;
  f.p = t.defined() ? t.data_ptr() : nullptr;
  return f;
}
Field ptr(const std::optional<Tensor>& t) {
  Field f;
  f.p = t.has_value() && t->defined() ? t->data_ptr() : nullptr;
  return f;
}
Field ptr(const void* p) {
  Field f;
  f.p = p;
  return f;
}
Field num(int64_t q) {
  Field f;
  f.q = q;
  return f;
}
Field real(double d) {
  Field f;
  f.d = d;
  return f;
}

int dtype_index(const Tensor& x) { return x.scalar_type() == at::kDouble ? 1 : 0; }

Kernel kernel(std::atomic<Kernel>* table, const Tensor& x) {
  Kernel k = table[dtype_index(x)].load(std::memory_order_acquire);
  TORCH_CHECK(k != nullptr, "bnlab_kernels: the kernels are not bound (call bind first)");
  return k;
}

struct TrainStep : public torch::autograd::Function<TrainStep> {
  // The optional arguments stay std::optional: custom Functions take no undefined tensors.
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const std::optional<Tensor>& weight,
                        const std::optional<Tensor>& bias, double eps,
                        const std::optional<Tensor>& running_mean,
                        const std::optional<Tensor>& running_var,
                        const std::optional<Tensor>& num_batches_tracked, double factor) {
    const int64_t n = x.size(0), c = x.size(1);
    Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
    // Rows: mean, var (biased), inv_std, pivot, offset (see kernels.train_forward).
    Tensor stats = at::empty({5, c}, x.options());
    const Field args[14] = {
        ptr(x), ptr(y), num(n), num(c), num(x.numel() / (n * c)), ptr(weight), ptr(bias),
        real(eps), ptr(stats), ptr(running_mean), ptr(running_var), ptr(num_batches_tracked),
        real(factor), num(at::get_num_threads())};
    kernel(forward_kernel, x)(args);
    ctx->save_for_backward({x, weight.value_or(Tensor()), stats});
    ctx->saved_data["eps"] = eps;
    // needs_input_grad counts the tensors given (an absent optional has no edge).
    ctx->saved_data["weight_edge"] = weight.has_value() ? int64_t{1} : int64_t{-1};
    ctx->saved_data["bias_edge"] =
        bias.has_value() ? int64_t{weight.has_value() ? 2 : 1} : int64_t{-1};
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor& weight = saved[1];
    const Tensor& stats = saved[2];
    const Tensor& grad_y = grad_outputs[0];
    const int64_t weight_edge = ctx->saved_data["weight_edge"].toInt();
    const int64_t bias_edge = ctx->saved_data["bias_edge"].toInt();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w = weight_edge >= 0 && ctx->needs_input_grad(weight_edge);
    const bool need_b = bias_edge >= 0 && ctx->needs_input_grad(bias_edge);
    Tensor grad_x, grad_weight, grad_bias;
    if (!at::GradMode::is_enabled() && grad_y.defined() && !grad_y.is_cuda() &&
        grad_y.scalar_type() == x.scalar_type() && grad_y.sizes() == x.sizes() &&
        grad_y.is_contiguous()) {
      const int64_t n = x.size(0), c = x.size(1);
      if (need_x) grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
      if (need_w) grad_weight = at::empty({c}, x.options());
      if (need_b) grad_bias = at::empty({c}, x.options());
      const char* rows = static_cast<const char*>(stats.data_ptr());
      const int64_t row = c * stats.element_size();
      const Field args[13] = {
          ptr(grad_y), ptr(x), num(n), num(c), num(x.numel() / (n * c)), ptr(weight),
          ptr(rows + 2 * row), ptr(rows + 3 * row), ptr(rows + 4 * row), ptr(grad_x),
          ptr(grad_weight), ptr(grad_bias), num(at::get_num_threads())};
      kernel(backward_kernel, x)(args);
    } else {
      static const auto op =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("bnlab_kernels::batch_norm_train_backward", "")
              .typed<std::vector<Tensor>(const Tensor&, const Tensor&,
                                         const std::optional<Tensor>&, const Tensor&, double,
                                         std::array<bool, 3>)>();
      std::optional<Tensor> w;
      if (weight.defined()) w = weight;
      const std::vector<Tensor> grads =
          op.call(grad_y, x, w, stats, ctx->saved_data["eps"].toDouble(), {need_x, need_w, need_b});
      if (need_x) grad_x = grads[0];
      if (need_w) grad_weight = grads[1];
      if (need_b) grad_bias = grads[2];
    }
    // One gradient per forward argument; the non-tensor and buffer ones get none.
    return {grad_x, grad_weight, grad_bias, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// Whether the node takes the call: what bnlab.kernels.batch_norm_eligible asks of a CPU
// training call (asked here because these checks cost 1.6 us in Python and 0.05 us in
// C++), but the input's size, which the caller (kernels.train_node) has checked.
// Forward-mode AD (dual tensors) is refused too: the node has no jvp, and the Python
// path says so in torch's words.
bool takes(const Tensor& x, std::initializer_list<const std::optional<Tensor>*> per_channel,
           const std::optional<Tensor>& counter) {
  const auto dtype = x.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kDouble) || !x.device().is_cpu() || x.dim() < 2 ||
      !x.is_contiguous() || x._fw_grad(/*level=*/0).defined())
    return false;
  const int64_t c = x.size(1);
  if (x.numel() <= c) return false;  // one value per channel: the Python path raises
  for (const auto* t : per_channel) {
    if (!t->has_value()) continue;
    const Tensor& v = **t;
    if (v.scalar_type() != dtype || v.dim() != 1 || v.size(0) != c || !v.is_contiguous() ||
        !v.device().is_cpu() || v._fw_grad(/*level=*/0).defined())
      return false;
  }
  if (counter.has_value()) {
    const Tensor& k = *counter;
    if (k.scalar_type() != at::kLong || k.dim() != 0 || !k.device().is_cpu()) return false;
  }
  return true;
}

std::optional<Tensor> batch_norm_train(const Tensor& x, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& bias, double eps,
                                       const std::optional<Tensor>& running_mean,
                                       const std::optional<Tensor>& running_var,
                                       const std::optional<Tensor>& num_batches_tracked,
                                       double factor) {
  if (!takes(x, {&weight, &bias, &running_mean, &running_var}, num_batches_tracked))
    return std::nullopt;
  return TrainStep::apply(x, weight, bias, eps, running_mean, running_var, num_batches_tracked,
                          factor);
}

void bind(int64_t forward_f32, int64_t forward_f64, int64_t backward_f32,
          int64_t backward_f64) {
  forward_kernel[0] = reinterpret_cast<Kernel>(forward_f32);
  forward_kernel[1] = reinterpret_cast<Kernel>(forward_f64);
  backward_kernel[0] = reinterpret_cast<Kernel>(backward_f32);
  backward_kernel[1] = reinterpret_cast<Kernel>(backward_f64);
}

}  // namespace

int64_t abi_version() { return 1; }

TORCH_LIBRARY_FRAGMENT(bnlab_kernels, m) {
  m.def("node_abi_version() -> int", &abi_version);
  m.def("bind(int forward_f32, int forward_f64, int backward_f32, int backward_f64) -> ()",
        &bind);
  m.def(
      "batch_norm_train(Tensor x, Tensor? weight, Tensor? bias, float eps, "
      "Tensor? running_mean, Tensor? running_var, Tensor? num_batches_tracked, "
      "float factor) -> Tensor?");
  m.impl("batch_norm_train", c10::DispatchKey::CompositeImplicitAutograd,
         TORCH_FN(batch_norm_train));
}
