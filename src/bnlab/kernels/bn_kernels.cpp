// Fused CPU kernels of bnlab's normalization fast path (bnlab.kernels, built and loaded by
// bnlab/kernels/__init__.py; bnlab.autograd decides which calls take them).
//
// Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167.
//
// Plain C ABI over raw pointers (loaded with ctypes, no torch headers, so it compiles in
// about a second); each entry point takes one buffer of packed arguments (see the end).
// Inputs are contiguous (N, C, S) arrays, S = product of the spatial dims (S = 1 for
// (N, C) inputs); T is float or double.
//
// Numerics are those of bnlab.functional.moments (corrected two-pass statistics): every
// sum is taken of shifted values d = x - pivot, pivot = the channel's first element, in
// double accumulators (one set per thread, merged in a fixed order), so a float32
// channel 1e4 + 1e-3 * noise has the mean and variance of the noise. Since the pivot is
// a data point, var >= (pivot - mean)^2 / n, and sum(d^2)/n - offset^2 loses at most a
// factor n of double precision. y and grad_x are formed from x - pivot (exact in
// float32 by Sterbenz's lemma for values near the pivot), never from x - mean.
//
// Passes: training forward = 1 read of x (sums) + 1 read of x and 1 write of y;
// backward = 1 read of (grad_y, x) (sums) + 1 read of (grad_y, x) and 1 write of grad_x;
// eval = 1 read of x and 1 write of y.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>
#include <omp.h>

namespace {

using i64 = int64_t;

// Each thread of a parallel region gets at least this many elements. Measured
// (benchmarks/bench_kernel_threads.py, BN training step, 2 threads vs 1, interleaved, on a
// shared 2-core machine): the second thread gains nothing at 32 Ki elements (median ratio
// 1.00), 7% at 48 Ki, 15% at 64 Ki, 28% at 128 Ki, while beside other work one call in ten
// of any parallel size waits 5-100x longer for a descheduled sibling. So a call takes one
// thread per 32 Ki elements, up to the caller's count (the team is fixed by the call, so
// the same call with the same thread setting gives the same digits).
constexpr i64 kPerThreadMin = 1 << 15;

inline int threads_for(i64 numel, int nthreads) {
  const i64 by_work = numel / kPerThreadMin;
  if (nthreads <= 1 || by_work <= 1) return 1;
  return by_work < nthreads ? static_cast<int>(by_work) : nthreads;
}

// Runs body(t, team) on each thread t of a team of nt. One thread calls it directly: an
// OpenMP region of one thread still costs about 1 us (team setup; measured here), up to
// a third of a kernel on the small inputs that run on one thread.
template <typename F>
void parallel(int nt, const F& body) {
  if (nt <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  body(omp_get_thread_num(), omp_get_num_threads());  // the team may be smaller than nt
}

// First item of thread t of a team in a static split of n items into contiguous blocks.
inline i64 split(i64 n, int t, int team) { return n * t / team; }

// Calls f(a, b) with a and b as std::bool_constant, one instantiation per case, so that a
// loop in f tests them at compile time (if constexpr): a condition inside a loop (a
// conditional load) stops vectorization.
template <typename F>
inline void with_flags(bool a, bool b, const F& f) {
  if (a && b) {
    f(std::true_type{}, std::true_type{});
  } else if (a) {
    f(std::true_type{}, std::false_type{});
  } else if (b) {
    f(std::false_type{}, std::true_type{});
  } else {
    f(std::false_type{}, std::false_type{});
  }
}

// Doubles between the starts of two threads' partial sums (first[C], second[C]): at
// least 16 (128 bytes, two cache lines) apart from the next thread's, so that no cache
// line is written by two threads. Adjacent blocks made the two threads of a (N, C, H, W)
// call fight over one line at every (n, c) plane: 3-5x slower than one thread (measured
// at 256x6x24x24), now faster.
inline i64 partial_stride(i64 C) { return (2 * C + 15) / 16 * 16 + 16; }

// Adds the per-thread partial sums acc[t] = (first[C], second[C]) in thread order (a
// fixed order: the result does not depend on scheduling).
inline void merge_partials(const std::vector<double>& acc, i64 C, int nt, double* first,
                           double* second) {
  const i64 stride = partial_stride(C);
  for (i64 c = 0; c < C; ++c) {
    double u1 = 0.0, u2 = 0.0;
    for (int t = 0; t < nt; ++t) {
      u1 += acc[stride * t + c];
      u2 += acc[stride * t + C + c];
    }
    first[c] = u1;
    second[c] = u2;
  }
}

// The biased variance from the shifted sums, clamped at 0 against rounding; NaN stays
// NaN (data holding NaN, or inf: inf - inf), as in bnlab.functional.moments.
inline double shifted_variance(double s1, double s2, double count) {
  const double off = s1 / count;
  const double v = s2 / count - off * off;
  return v < 0.0 ? 0.0 : v;
}

// inv_std = 1 / sqrt(var + eps), var rounded to T first (as the reference path computes
// rsqrt in T). A var that overflows T (float32 data spread beyond about 1e19) gives NaN,
// as bnlab.functional.moments.checked_variance does: inv_std = 0 would be the finite,
// wrong y = bias with zero gradients.
template <typename T>
inline T inv_std_of(double v, double eps) {
  const T vt = static_cast<T>(v);
  if (std::isinf(vt)) return std::numeric_limits<T>::quiet_NaN();
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(vt) + eps));
}

// Two double terms of one element, summed per channel by channel_sums.
struct TermPair {
  double first, second;
};

// Per-channel sums over (N, S) of the two terms term(i, pv) of each element (i its flat
// index, pv its channel's pivot), in double: s1[c], s2[c]. Per thread, the terms of a
// (n, c) plane are summed first, then added to the channel's accumulator.
template <typename T, typename Term>
void channel_sums(i64 N, i64 C, i64 S, const T* pivot, double* s1, double* s2, int nthreads,
                  const Term& term) {
  const int nt = threads_for(N * C * S, nthreads);
  std::vector<double> acc(static_cast<size_t>(partial_stride(C) * nt), 0.0);
  parallel(nt, [&](int t, int team) {
    // A copy of the closure: read through the reference, in the outlined OpenMP body,
    // GCC vectorized the plane loop with gathers (5x slower than one thread at
    // 256x6x24x24 on this machine's CPU).
    const Term term_t = term;
    double* a1 = acc.data() + partial_stride(C) * t;
    double* a2 = a1 + C;
    if (S == 1) {
      for (i64 n = split(N, t, team), end = split(N, t + 1, team); n < end; ++n) {
        const i64 row = n * C;
#pragma omp simd
        for (i64 c = 0; c < C; ++c) {
          const TermPair u = term_t(row + c, pivot[c]);
          a1[c] += u.first;
          a2[c] += u.second;
        }
      }
    } else {
      for (i64 p = split(N * C, t, team), end = split(N * C, t + 1, team); p < end; ++p) {
        const i64 c = p % C;
        const i64 plane = p * S;
        const T pv = pivot[c];
        double u1 = 0.0, u2 = 0.0;
#pragma omp simd reduction(+ : u1, u2)
        for (i64 s = 0; s < S; ++s) {
          const TermPair u = term_t(plane + s, pv);
          u1 += u.first;
          u2 += u.second;
        }
        a1[c] += u1;
        a2[c] += u2;
      }
    }
  });
  merge_partials(acc, C, nt, s1, s2);
}

// Per-channel sums of d = x - pivot and d * d over (N, S): s1[c], s2[c] (double).
template <typename T>
void shifted_sums(const T* x, i64 N, i64 C, i64 S, const T* pivot, double* s1, double* s2,
                  int nthreads) {
  channel_sums(N, C, S, pivot, s1, s2, nthreads, [x](i64 i, T pv) {
    const double d = static_cast<double>(x[i] - pv);
    return TermPair{d, d * d};
  });
}

// Per-channel sum(g) and sum(g * (x - pivot)) over (N, S) (double).
template <typename T>
void grad_sums(const T* g, const T* x, i64 N, i64 C, i64 S, const T* pivot, double* sg,
               double* sgd, int nthreads) {
  channel_sums(N, C, S, pivot, sg, sgd, nthreads, [g, x](i64 i, T pv) {
    const double gv = static_cast<double>(g[i]);
    return TermPair{gv, gv * static_cast<double>(x[i] - pv)};
  });
}

// The per-channel values of an elementwise map (channel_map): the pivot and up to three
// coefficients.
template <typename T>
struct ChannelCoef {
  T pivot, k1, k2, k3;
};

// out[i] = apply(coef(c), i) for each element i of (N, C, S) (c its channel). With S > 1
// the channel's values are read once per (n, c) plane. apply takes the ChannelCoef by
// value: by reference, the (N, C) loop stops vectorizing (measured 3x slower).
template <typename T, typename Coef, typename Apply>
void channel_map(T* out, i64 N, i64 C, i64 S, int nthreads, const Coef& coef,
                 const Apply& apply) {
  const int nt = threads_for(N * C * S, nthreads);
  parallel(nt, [&](int t, int team) {
    if (S == 1) {
      for (i64 n = split(N, t, team), end = split(N, t + 1, team); n < end; ++n) {
        const i64 row = n * C;
        T* o = out + row;
#pragma omp simd
        for (i64 c = 0; c < C; ++c) o[c] = apply(coef(c), row + c);
      }
    } else {
      for (i64 p = split(N * C, t, team), end = split(N * C, t + 1, team); p < end; ++p) {
        const i64 plane = p * S;
        const ChannelCoef<T> k = coef(p % C);
#pragma omp simd
        for (i64 s = 0; s < S; ++s) out[plane + s] = apply(k, plane + s);
      }
    }
  });
}

// out = (x - pivot) * a + b per channel (a, b in T); out may not alias x.
template <typename T>
void affine_shifted(const T* x, T* out, i64 N, i64 C, i64 S, const T* pivot, const T* a,
                    const T* b, int nthreads) {
  channel_map(
      out, N, C, S, nthreads, [=](i64 c) { return ChannelCoef<T>{pivot[c], a[c], b[c], T(0)}; },
      [x](ChannelCoef<T> k, i64 i) { return (x[i] - k.pivot) * k.k1 + k.k2; });
}

// out = k1 * g + k2 * (x - pivot) + k3 per channel.
template <typename T>
void grad_input(const T* g, const T* x, T* out, i64 N, i64 C, i64 S, const T* pivot,
                const T* k1, const T* k2, const T* k3, int nthreads) {
  channel_map(
      out, N, C, S, nthreads,
      [=](i64 c) { return ChannelCoef<T>{pivot[c], k1[c], k2[c], k3[c]}; },
      [g, x](ChannelCoef<T> k, i64 i) {
        return k.k1 * g[i] + (k.k2 * (x[i] - k.pivot) + k.k3);
      });
}

// Training forward. stats: (5, C) rows mean, var (biased), inv_std, pivot, offset.
// With running_mean/running_var (both or neither), the running statistics are updated
// in place, as bnlab.functional.batch_norm.running_stats_update computes them:
// running = running + factor * (batch - running) with the T-rounded batch mean and the
// unbiased variance var * n / (n - 1), in double, rounded once to T. factor is the
// weight of the new batch, computed by the caller (bnlab.functional.batch_norm
// running_update_factor: momentum, or 1 / num_batches_tracked for momentum=None).
// num_batches_tracked (may be null) is incremented.
template <typename T>
void train_forward(const T* x, T* y, i64 N, i64 C, i64 S, const T* weight, const T* bias,
                   double eps, T* stats, T* running_mean, T* running_var,
                   int64_t* num_batches_tracked, double factor, int nthreads) {
  T* mean = stats;
  T* var = stats + C;
  T* inv_std = stats + 2 * C;
  T* pivot = stats + 3 * C;
  T* offset = stats + 4 * C;
  for (i64 c = 0; c < C; ++c) pivot[c] = x[c * S];
  std::vector<double> s1(C), s2(C);
  shifted_sums(x, N, C, S, pivot, s1.data(), s2.data(), nthreads);
  const double count = static_cast<double>(N * S);
  std::vector<T> a(C), b(C);
  for (i64 c = 0; c < C; ++c) {
    const double off = s1[c] / count;
    const double v = shifted_variance(s1[c], s2[c], count);
    const T is = inv_std_of<T>(v, eps);
    const T o = static_cast<T>(off);
    offset[c] = o;
    var[c] = static_cast<T>(v);
    inv_std[c] = is;
    mean[c] = pivot[c] + o;
    const double sc = weight ? static_cast<double>(weight[c]) * is : static_cast<double>(is);
    a[c] = static_cast<T>(sc);
    b[c] = static_cast<T>((bias ? static_cast<double>(bias[c]) : 0.0) - off * sc);
  }
  affine_shifted(x, y, N, C, S, pivot, a.data(), b.data(), nthreads);
  if (num_batches_tracked) *num_batches_tracked += 1;
  if (running_mean && running_var) {
    const double unbias = count / (count - 1.0);
    for (i64 c = 0; c < C; ++c) {
      const double rm = static_cast<double>(running_mean[c]);
      const double rv = static_cast<double>(running_var[c]);
      const double v = static_cast<double>(var[c]) * unbias;
      running_mean[c] = static_cast<T>(rm + factor * (static_cast<double>(mean[c]) - rm));
      running_var[c] = static_cast<T>(rv + factor * (v - rv));
    }
  }
}

// Training backward; grad_x / grad_weight / grad_bias may be null (not requested).
template <typename T>
void train_backward(const T* g, const T* x, i64 N, i64 C, i64 S, const T* weight,
                    const T* inv_std, const T* pivot, const T* offset, T* grad_x,
                    T* grad_weight, T* grad_bias, int nthreads) {
  std::vector<double> sg(C), sgd(C);
  grad_sums(g, x, N, C, S, pivot, sg.data(), sgd.data(), nthreads);
  const double count = static_cast<double>(N * S);
  std::vector<T> k1(C), k2(C), k3(C);
  for (i64 c = 0; c < C; ++c) {
    const double is = static_cast<double>(inv_std[c]);
    const double off = static_cast<double>(offset[c]);
    // sum(g * (x - mean)) = sum(g * (x - pivot)) - offset * sum(g).
    const double gd = sgd[c] - off * sg[c];
    if (grad_bias) grad_bias[c] = static_cast<T>(sg[c]);
    if (grad_weight) grad_weight[c] = static_cast<T>(gd * is);
    const double w = weight ? static_cast<double>(weight[c]) : 1.0;
    const double a = w * is;
    const double b = -a * is * is * gd / count;
    k1[c] = static_cast<T>(a);
    k2[c] = static_cast<T>(b);
    k3[c] = static_cast<T>(-a * sg[c] / count - b * off);
  }
  if (grad_x) grad_input(g, x, grad_x, N, C, S, pivot, k1.data(), k2.data(), k3.data(), nthreads);
}

// Eval forward: y = (x - running_mean) * (weight / sqrt(running_var + eps)) + bias.
template <typename T>
void eval_forward(const T* x, T* y, i64 N, i64 C, i64 S, const T* running_mean,
                  const T* running_var, const T* weight, const T* bias, double eps,
                  int nthreads) {
  std::vector<T> a(C), b(C);
  for (i64 c = 0; c < C; ++c) {
    T sc = static_cast<T>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
    if (weight) sc = sc * weight[c];
    a[c] = sc;
    b[c] = bias ? bias[c] : T(0);
  }
  affine_shifted(x, y, N, C, S, running_mean, a.data(), b.data(), nthreads);
}

// ----------------------------------------------------------------- group normalization
//
// Wu & He, "Group Normalization", arXiv 1803.08494 (InstanceNorm: G == C). The input is
// a contiguous (N, C, S) array with C = G * Cg, so the values of group g of sample n are
// the R = N * G contiguous rows of M = Cg * S values each. One thread owns whole rows
// (the statistics, the output and the backward sums of a row are computed by the same
// thread, the row stays in its cache between the two passes). Same numerics as the BN
// kernels: shifted sums around the row's first element in double, biased variance,
// inv_std = 1 / sqrt(var + eps) rounded to T.
//
// stats: (3, R) rows inv_std, pivot, offset (mean - pivot), read back by the backward.

// Statistics of one contiguous row of M values around the pivot pv (its first value),
// in one pass: offset = mean - pv and the inv_std of the biased variance (corrected two
// pass: sum(d^2)/M - offset^2 on d = x - pv, in double), as the BN kernels compute them.
template <typename T>
struct RowStats {
  double offset;
  T inv_std;
  T pivot;
};

// row_stats of row r (xr, its first value the pivot), stored in the (3, R) stats rows
// inv_std, pivot, offset of group_forward and layer_forward.
template <typename T>
inline RowStats<T> row_stats(const T* xr, i64 M, double eps, T* stats, i64 R, i64 r) {
  const T pv = xr[0];
  double u1 = 0.0, u2 = 0.0;
#pragma omp simd reduction(+ : u1, u2)
  for (i64 i = 0; i < M; ++i) {
    const double d = static_cast<double>(xr[i] - pv);
    u1 += d;
    u2 += d * d;
  }
  const double count = static_cast<double>(M);
  const RowStats<T> st{u1 / count, inv_std_of<T>(shifted_variance(u1, u2, count), eps), pv};
  stats[r] = st.inv_std;
  stats[R + r] = pv;
  stats[2 * R + r] = static_cast<T>(st.offset);
  return st;
}

// The coefficients of grad_x = k1 * g + k2 * (x - pivot) + k3 over one row of
// group_backward and layer_backward, from its inv_std is, offset off, count values and
// A = sum(gw), B = sum(gw * (x - pivot)) (double), since sum(gw * x_hat) =
// inv_std * (B - offset * A).
template <typename T>
struct RowGradCoef {
  T k2, k3;
};

template <typename T>
inline RowGradCoef<T> row_grad_coef(double is, double off, double count, double A, double B) {
  const double k2 = -is * is * is * (B - off * A) / count;
  return {static_cast<T>(k2), static_cast<T>(-is * A / count - k2 * off)};
}

// The parameter gradients of group_backward and layer_backward from per-slot partial
// sums: grad_weight[j] and grad_bias[j] (either may be null) for j in [first, end) are the
// sums over k = 0..rows-1, in this order, of pw[k * cols + j] and pb[k * cols + j]
// (double), rounded once to T.
template <typename T>
inline void column_sums(const double* pw, const double* pb, i64 rows, i64 cols, i64 first,
                        i64 end, T* grad_weight, T* grad_bias) {
  for (i64 j = first; j < end; ++j) {
    double sw = 0.0, sb = 0.0;
    for (i64 k = 0; k < rows; ++k) {
      sw += pw[k * cols + j];
      sb += pb[k * cols + j];
    }
    if (grad_weight) grad_weight[j] = static_cast<T>(sw);
    if (grad_bias) grad_bias[j] = static_cast<T>(sb);
  }
}

template <typename T>
void group_forward(const T* x, T* y, i64 N, i64 C, i64 S, i64 G, const T* weight,
                   const T* bias, double eps, T* stats, int nthreads) {
  const i64 R = N * G, Cg = C / G, M = Cg * S;
  const int nt = threads_for(N * C * S, nthreads);
  parallel(nt, [&](int t, int team) {
    for (i64 r = split(R, t, team), end = split(R, t + 1, team); r < end; ++r) {
      const T* xr = x + r * M;
      T* yr = y + r * M;
      const RowStats<T> st = row_stats(xr, M, eps, stats, R, r);
      const T pv = st.pivot;
      const double off = st.offset;
      const T is = st.inv_std;
      const i64 c0 = (r % G) * Cg;
      for (i64 k = 0; k < Cg; ++k) {
        const i64 c = c0 + k;
        const double sc = weight ? static_cast<double>(weight[c]) * is : static_cast<double>(is);
        const T a = static_cast<T>(sc);
        const T b = static_cast<T>((bias ? static_cast<double>(bias[c]) : 0.0) - off * sc);
        const T* xp = xr + k * S;
        T* yp = yr + k * S;
#pragma omp simd
        for (i64 s = 0; s < S; ++s) yp[s] = (xp[s] - pv) * a + b;
      }
    }
  });
}

// Backward of group_forward; grad_x / grad_weight / grad_bias may be null. With w_c the
// channel weight, x_hat = (x - mean) * inv_std and gw = g * w_c, over a row:
//   grad_x = inv_std * (gw - mean(gw) - x_hat * mean(gw * x_hat))
//          = k1_c * g + k2 * (x - pivot) + k3,
// from A = sum_c w_c sum_s g and B = sum_c w_c sum_s g * (x - pivot) (double). The
// per-channel parameter gradients are sums over n of per-(n, c) terms, which are stored
// (one slot each, written by the row's thread) and added in the order n = 0..N-1, so
// the result does not depend on the number of threads.
template <typename T>
void group_backward(const T* g, const T* x, i64 N, i64 C, i64 S, i64 G, const T* weight,
                    const T* stats, T* grad_x, T* grad_weight, T* grad_bias, int nthreads) {
  const i64 R = N * G, Cg = C / G, M = Cg * S;
  const T* inv_std = stats;
  const T* pivot = stats + R;
  const T* offset = stats + 2 * R;
  const int nt = threads_for(N * C * S, nthreads);
  const double count = static_cast<double>(M);
  // Per (n, c): sum_s g and sum_s g * (x - mean) * inv_std.
  std::vector<double> psg(static_cast<size_t>(N * C)), pgx(static_cast<size_t>(N * C));
  parallel(nt, [&](int t, int team) {
    for (i64 r = split(R, t, team), end = split(R, t + 1, team); r < end; ++r) {
      const T* xr = x + r * M;
      const T* gr = g + r * M;
      const T pv = pivot[r];
      const double is = static_cast<double>(inv_std[r]);
      const double off = static_cast<double>(offset[r]);
      const i64 c0 = (r % G) * Cg;
      double A = 0.0, B = 0.0;
      for (i64 k = 0; k < Cg; ++k) {
        const T* xp = xr + k * S;
        const T* gp = gr + k * S;
        double u1 = 0.0, u2 = 0.0;
#pragma omp simd reduction(+ : u1, u2)
        for (i64 s = 0; s < S; ++s) {
          const double gv = static_cast<double>(gp[s]);
          u1 += gv;
          u2 += gv * static_cast<double>(xp[s] - pv);
        }
        const i64 c = c0 + k;
        const double w = weight ? static_cast<double>(weight[c]) : 1.0;
        A += w * u1;
        B += w * u2;
        psg[r * Cg + k] = u1;  // r * Cg + k == n * C + c
        pgx[r * Cg + k] = (u2 - off * u1) * is;
      }
      if (!grad_x) continue;
      const RowGradCoef<T> rc = row_grad_coef<T>(is, off, count, A, B);
      T* o = grad_x + r * M;
      for (i64 k = 0; k < Cg; ++k) {
        const i64 c = c0 + k;
        const T k1t = static_cast<T>(weight ? static_cast<double>(weight[c]) * is : is);
        const T* xp = xr + k * S;
        const T* gp = gr + k * S;
        T* op = o + k * S;
#pragma omp simd
        for (i64 s = 0; s < S; ++s) op[s] = k1t * gp[s] + (rc.k2 * (xp[s] - pv) + rc.k3);
      }
    }
  });
  if (grad_weight || grad_bias) {
    column_sums(pgx.data(), psg.data(), N, C, 0, C, grad_weight, grad_bias);
  }
}

// ----------------------------------------------------------------- layer normalization
//
// Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450. The input is R contiguous
// rows of M values (the trailing normalized dims), with an elementwise affine of M
// values. Row statistics as in group_forward; stats: (3, R) rows inv_std, pivot, offset.
// The parameter gradients are sums over rows per element: rows are cut into at most
// kLayerBlocks fixed blocks (a function of R only), each block sums into its own double
// buffer, and the buffers are added in block order, so the result does not depend on
// the number of threads.

constexpr i64 kLayerBlocks = 16;

template <typename T>
void layer_forward(const T* x, T* y, i64 R, i64 M, const T* weight, const T* bias, double eps,
                   T* stats, int nthreads) {
  const int nt = threads_for(R * M, nthreads);
  parallel(nt, [&](int t, int team) {
    for (i64 r = split(R, t, team), end = split(R, t + 1, team); r < end; ++r) {
      const T* xr = x + r * M;
      T* yr = y + r * M;
      const RowStats<T> st = row_stats(xr, M, eps, stats, R, r);
      const T pv = st.pivot;
      const double off = st.offset;
      const T is = st.inv_std;
      const T c = static_cast<T>(-off * static_cast<double>(is));
      with_flags(weight != nullptr, bias != nullptr, [&](auto weighted, auto biased) {
#pragma omp simd
        for (i64 i = 0; i < M; ++i) {
          T v = (xr[i] - pv) * is + c;
          if constexpr (weighted) v = v * weight[i];
          if constexpr (biased) v = v + bias[i];
          yr[i] = v;
        }
      });
    }
  });
}

// Backward of layer_forward; grad_x / grad_weight / grad_bias may be null. Per row, with
// gw = g * w: A = sum(gw), B = sum(gw * (x - pivot)) (double) and
//   grad_x = inv_std * (gw - A / M - x_hat * inv_std * (B - offset * A) / M)
//          = inv_std * gw + k2 * (x - pivot) + k3.
template <typename T>
void layer_backward(const T* g, const T* x, i64 R, i64 M, const T* weight, const T* stats,
                    T* grad_x, T* grad_weight, T* grad_bias, int nthreads) {
  const T* inv_std = stats;
  const T* pivot = stats + R;
  const T* offset = stats + 2 * R;
  const bool params = grad_weight || grad_bias;
  const i64 nb = R < kLayerBlocks ? R : kLayerBlocks;
  std::vector<double> pw(params ? static_cast<size_t>(nb * M) : 0, 0.0);
  std::vector<double> pb(params ? static_cast<size_t>(nb * M) : 0, 0.0);
  const int nt0 = threads_for(R * M, nthreads);
  const int nt = nt0 < nb ? nt0 : static_cast<int>(nb);
  const double count = static_cast<double>(M);
  parallel(nt, [&](int t, int team) {
    for (i64 blk = split(nb, t, team), bend = split(nb, t + 1, team); blk < bend; ++blk) {
      double* bw = params ? pw.data() + blk * M : nullptr;
      double* bb = params ? pb.data() + blk * M : nullptr;
      for (i64 r = split(R, static_cast<int>(blk), static_cast<int>(nb)),
               end = split(R, static_cast<int>(blk + 1), static_cast<int>(nb));
           r < end; ++r) {
        const T* xr = x + r * M;
        const T* gr = g + r * M;
        const T pv = pivot[r];
        const double is = static_cast<double>(inv_std[r]);
        const double off = static_cast<double>(offset[r]);
        double A = 0.0, B = 0.0;
        // gw = g * w (g without weight); the parameter sums ride along the read for A and B.
        with_flags(params, weight != nullptr, [&](auto with_params, auto weighted) {
          double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
          for (i64 i = 0; i < M; ++i) {
            const double gv = static_cast<double>(gr[i]);
            const double d = static_cast<double>(xr[i] - pv);
            double gw = gv;
            if constexpr (weighted) gw = gv * static_cast<double>(weight[i]);
            a += gw;
            b += gw * d;
            if constexpr (with_params) {
              bb[i] += gv;
              bw[i] += gv * ((d - off) * is);
            }
          }
          A = a;
          B = b;
        });
        if (!grad_x) continue;
        const RowGradCoef<T> rc = row_grad_coef<T>(is, off, count, A, B);
        const T ist = static_cast<T>(is);
        T* o = grad_x + r * M;
        if (weight) {
#pragma omp simd
          for (i64 i = 0; i < M; ++i)
            o[i] = ist * (gr[i] * weight[i]) + (rc.k2 * (xr[i] - pv) + rc.k3);
        } else {
#pragma omp simd
          for (i64 i = 0; i < M; ++i) o[i] = ist * gr[i] + (rc.k2 * (xr[i] - pv) + rc.k3);
        }
      }
    }
  });
  if (!params) return;
  parallel(threads_for(nb * M, nthreads), [&](int t, int team) {
    column_sums(pw.data(), pb.data(), nb, M, split(M, t, team), split(M, t + 1, team),
                grad_weight, grad_bias);
  });
}

// 2x2 average pooling, stride 2, no padding (LeNet's AvgPool2d): each output is the mean
// of a disjoint 2x2 window, summed in torch's order (row by row, left to right, then
// divided by 4), so the results equal torch's; the backward spreads grad_y / 4 over the
// window. Planes of (N*C, H, W) contiguous; H and W even. torch's generic CPU kernel
// walks the window with per-element index arithmetic: about 5x these on LeNet's shapes.
//
// Runs body(r) for each output row r of the P * H/2 rows, split over the threads. Output
// row r reads input rows 2r and 2r + 1 of the stacked planes (H is even).
template <typename F>
void each_output_row(i64 P, i64 H, i64 W, int nthreads, const F& body) {
  const i64 rows = P * (H / 2);
  parallel(threads_for(P * H * W, nthreads), [&](int t, int team) {
    for (i64 r = split(rows, t, team), end = split(rows, t + 1, team); r < end; ++r) body(r);
  });
}

template <typename T>
void avg_pool2_forward(const T* x, T* y, i64 P, i64 H, i64 W, int nthreads) {
  const i64 Wo = W / 2;
  each_output_row(P, H, W, nthreads, [&](i64 r) {
    const T* top = x + 2 * r * W;
    const T* bottom = top + W;
    T* out = y + r * Wo;
#pragma omp simd
    for (i64 j = 0; j < Wo; ++j) {
      T sum = top[2 * j];
      sum += top[2 * j + 1];
      sum += bottom[2 * j];
      sum += bottom[2 * j + 1];
      out[j] = sum / T(4);
    }
  });
}

template <typename T>
void avg_pool2_backward(const T* gy, T* gx, i64 P, i64 H, i64 W, int nthreads) {
  const i64 Wo = W / 2;
  each_output_row(P, H, W, nthreads, [&](i64 r) {
    T* top = gx + 2 * r * W;
    T* bottom = top + W;
    const T* g = gy + r * Wo;
#pragma omp simd
    for (i64 j = 0; j < Wo; ++j) {
      const T v = g[j] / T(4);
      top[2 * j] = v;
      top[2 * j + 1] = v;
      bottom[2 * j] = v;
      bottom[2 * j + 1] = v;
    }
  });
}

// Arguments of the C entry points, packed by the caller into one buffer (Python's
// struct.pack, _PACK in bnlab/kernels/__init__.py): a ctypes call converts each argument
// separately (about 0.2 us each), one buffer costs one conversion. The buffer holds the
// kernel's parameters in their order, every field 8 bytes, no padding: pointers (null is
// 0), int64 and double as they are, the thread count (an int here) as an int64. Read with
// memcpy, so the buffer needs no alignment.
template <typename P>
inline P packed_field(const char* buf, size_t i) {
  using Stored = std::conditional_t<std::is_same_v<P, int>, i64, P>;
  static_assert(sizeof(Stored) == 8, "every packed field is 8 bytes");
  Stored v;
  std::memcpy(&v, buf + 8 * i, sizeof(v));
  return static_cast<P>(v);
}

// Unpacked<kernel's type>::call<kernel> reads each parameter P of the kernel from its
// field of the buffer and calls it.
template <typename Signature>
struct Unpacked;

template <typename... P>
struct Unpacked<void (*)(P...)> {
  template <auto Kernel, size_t... I>
  static void call(const char* buf, std::index_sequence<I...>) {
    Kernel(packed_field<P>(buf, I)...);
  }
};

// Calls Kernel with its Fields parameters read from the packed buffer. Fields restates
// the kernel's arity, so a changed signature fails to compile here (and _PACK needs the
// same change).
template <auto Kernel, size_t Fields>
void call_packed(const void* packed) {
  Unpacked<decltype(Kernel)>::template call<Kernel>(static_cast<const char*>(packed),
                                                    std::make_index_sequence<Fields>{});
}

}  // namespace

// The entry points bnlab_<op>_f32 and bnlab_<op>_f64 of kernel op (float and double),
// each taking one buffer of `fields` packed arguments (see call_packed).
#define BNLAB_ENTRY_POINTS(op, fields)                                                \
  void bnlab_##op##_f32(const void* args) { call_packed<op<float>, fields>(args); } \
  void bnlab_##op##_f64(const void* args) { call_packed<op<double>, fields>(args); }

extern "C" {

int bnlab_fast_abi_version() { return 7; }

BNLAB_ENTRY_POINTS(train_forward, 14)
BNLAB_ENTRY_POINTS(train_backward, 13)
BNLAB_ENTRY_POINTS(eval_forward, 11)
BNLAB_ENTRY_POINTS(group_forward, 11)
BNLAB_ENTRY_POINTS(group_backward, 12)
BNLAB_ENTRY_POINTS(layer_forward, 9)
BNLAB_ENTRY_POINTS(layer_backward, 10)
BNLAB_ENTRY_POINTS(avg_pool2_forward, 6)
BNLAB_ENTRY_POINTS(avg_pool2_backward, 6)

}  // extern "C"
