// Event-driven convolution kernels for XLA:CPU, called through the XLA FFI
// (brainconv/lowering/event/kernels.py compiles this file with the machine's C++ compiler on
// first use and registers the handlers).
//
// Operands (see plan.py for the plan's layout):
//   forward:      x (N, P_in, C_in), w (C_in / groups, K, C_out), plan int32  ->  y (N, P_out, C_out)
//   weight_grad:  x (N, P_in, C_in), gy (N, P_out, C_out), plan int32          ->  dw (K, C_in / groups, C_out)
// Both scan x for its non-zeros (as one flat run, a bit mask per 64 values: walk_nonzeros) and, for
// each position that has some, loop over the (tap, output) pairs it reaches, adding a contiguous
// run of C_out / groups products per non-zero.
//
// Threads come from XLA's own intra-op pool: the calling thread works through the chunks itself
// and schedules helpers that take chunks only if they start in time, so a call never waits for a
// thread that another process keeps off the CPU.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The plan's header entries.
constexpr int kLeadCount = 0, kLastLength = 1, kLeadOffsets = 2, kLeadPairs = 3, kLastOffsets = 4, kLastPairs = 5;

struct Plan {
  int64_t p_lead, n_last;
  const int32_t *lead_offsets, *lead_pairs, *last_offsets, *last_pairs;
  explicit Plan(const int32_t* t)
      : p_lead(t[kLeadCount]), n_last(t[kLastLength]), lead_offsets(t + t[kLeadOffsets]),
        lead_pairs(t + t[kLeadPairs]), last_offsets(t + t[kLastOffsets]), last_pairs(t + t[kLastPairs]) {}
};

// Per input channel: its offset in the kernel-side array and in an output (or gradient) row.
struct Channels {
  std::vector<int64_t> kernel, row;
  int64_t cout_g;
  Channels(int64_t n_chan, int64_t cin_g, int64_t cout, int64_t kernel_channel_stride) {
    const int64_t groups = n_chan / cin_g;
    cout_g = cout / groups;
    kernel.resize(n_chan);
    row.resize(n_chan);
    for (int64_t c = 0; c < n_chan; ++c) {
      const int64_t g = c / cin_g;
      kernel[c] = (c - g * cin_g) * kernel_channel_stride + g * cout_g;
      row[c] = g * cout_g;
    }
  }
};

// a[0:n] += v * b[0:n]
template <typename T>
inline void axpy(T* __restrict a, const T* __restrict b, T v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] += v * b[i];
}

// Bit i of the result: p[i] != 0, for i < count <= 64 (a NaN counts as non-zero).  One vector
// compare per 16 (AVX-512) or 8 (AVX) floats where the compiler targets them.
inline uint64_t nonzero_bits(const float* p, int64_t count) {
  uint64_t bits = 0;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps();
  for (; i + 16 <= count; i += 16)
    bits |= uint64_t(_mm512_cmp_ps_mask(_mm512_loadu_ps(p + i), zero, _CMP_NEQ_UQ)) << i;
#elif defined(__AVX__)
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= count; i += 8)
    bits |= uint64_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + i), zero, _CMP_NEQ_UQ))) << i;
#endif
  for (; i < count; ++i) bits |= uint64_t(p[i] != 0.0f) << i;
  return bits;
}

inline uint64_t nonzero_bits(const double* p, int64_t count) {
  uint64_t bits = 0;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512d zero = _mm512_setzero_pd();
  for (; i + 8 <= count; i += 8)
    bits |= uint64_t(_mm512_cmp_pd_mask(_mm512_loadu_pd(p + i), zero, _CMP_NEQ_UQ)) << i;
#elif defined(__AVX__)
  const __m256d zero = _mm256_setzero_pd();
  for (; i + 4 <= count; i += 4)
    bits |= uint64_t(_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(p + i), zero, _CMP_NEQ_UQ))) << i;
#endif
  for (; i < count; ++i) bits |= uint64_t(p[i] != 0.0) << i;
  return bits;
}

// The non-zeros of one input position (their values and channel offsets, kernel side and output
// side), and the (tap, output) pairs of that position, as offsets into the kernel-side and
// output-side arrays.
template <typename T>
struct Events {
  std::vector<int64_t> kernel, row, tap, out;
  std::vector<T> value;
  int64_t count = 0, pairs = 0;
  Events(int64_t n_chan, int64_t n_taps) : kernel(n_chan), row(n_chan), tap(n_taps), out(n_taps), value(n_chan) {}

  void push(int64_t c, T v, const Channels& ch) {
    kernel[count] = ch.kernel[c];
    row[count] = ch.row[c];
    value[count] = v;
    ++count;
  }

  // The pairs of the position with lead pairs [a0, a1) and last-axis pairs [b0, b1); tap offsets
  // scaled by tap_stride, output offsets by cout.
  void pair_up(const Plan& plan, int64_t a0, int64_t a1, int64_t b0, int64_t b1, int64_t tap_stride, int64_t cout) {
    pairs = 0;
    for (int64_t a = a0; a < a1; ++a)
      for (int64_t b = b0; b < b1; ++b) {
        tap[pairs] = (int64_t(plan.lead_pairs[2 * a]) + plan.last_pairs[2 * b]) * tap_stride;
        out[pairs] = (int64_t(plan.lead_pairs[2 * a + 1]) + plan.last_pairs[2 * b + 1]) * cout;
        ++pairs;
      }
  }

  // For every non-zero and pair: dst[dst_at] += value * src[src_at] over a run of n values, where
  // (dst, src) are (output, kernel) for the forward and (kernel gradient, output gradient) for the
  // kernel gradient.  One value per run (depthwise kernels) gets a loop of its own.
  void scatter(T* __restrict dst, const T* __restrict src, bool dst_is_out, int64_t n) const {
    const std::vector<int64_t>& dst_ch = dst_is_out ? row : kernel;
    const std::vector<int64_t>& src_ch = dst_is_out ? kernel : row;
    const std::vector<int64_t>& dst_pair = dst_is_out ? out : tap;
    const std::vector<int64_t>& src_pair = dst_is_out ? tap : out;
    if (n == 1) {
      for (int64_t q = 0; q < pairs; ++q) {
        T* d = dst + dst_pair[q];
        const T* s = src + src_pair[q];
        for (int64_t j = 0; j < count; ++j) d[dst_ch[j]] += value[j] * s[src_ch[j]];
      }
      return;
    }
    for (int64_t j = 0; j < count; ++j) {
      T* d = dst + dst_ch[j];
      const T* s = src + src_ch[j];
      for (int64_t q = 0; q < pairs; ++q) axpy(d + dst_pair[q], s + src_pair[q], value[j], n);
    }
  }
};

// Calls visit(pos, events) for every position in [first, last) of x (rows of n_chan values) that
// holds a non-zero, with `events` holding that position's non-zeros.  The rows are scanned as one
// flat run, 64 values at a time (a bit mask each), so a sparse input costs about one vector compare
// per 16 or 8 values whatever its channel count, and the work per position only where it has
// non-zeros.
template <typename T, typename Visit>
void walk_nonzeros(const T* __restrict x, int64_t first, int64_t last, int64_t n_chan, const Channels& ch,
                   Events<T>& ev, Visit visit) {
  const int64_t begin = first * n_chan, end = last * n_chan;
  int64_t pos = -1;
  ev.count = 0;
  for (int64_t i0 = begin; i0 < end; i0 += 64) {
    for (uint64_t bits = nonzero_bits(x + i0, std::min<int64_t>(64, end - i0)); bits; bits &= bits - 1) {
      const int64_t i = i0 + __builtin_ctzll(bits);
      const int64_t p = i / n_chan;
      if (p != pos) {
        if (ev.count) visit(pos, ev);
        pos = p;
        ev.count = 0;
      }
      ev.push(i - p * n_chan, x[i], ch);
    }
  }
  if (ev.count) visit(pos, ev);
}

// Runs work(chunk) for chunk in [0, n_chunks) on the calling thread and on up to `threads - 1`
// helpers from XLA's pool; `begin()` is called once by every thread that takes a chunk, before
// its first one, and returns that thread's context.  Returns once every chunk is done.
template <typename Begin, typename Work>
void parallel_chunks(ffi::ThreadPool& pool, int64_t n_chunks, Begin begin, Work work) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, n_chunks, begin, work]() {
    int64_t chunk = state->next.fetch_add(1);
    if (chunk >= n_chunks) return;
    auto context = begin();
    for (; chunk < n_chunks; chunk = state->next.fetch_add(1)) {
      work(context, chunk);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n_chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([run]() { run(); });
  run();
  while (state->done.load(std::memory_order_acquire) < n_chunks) std::this_thread::yield();
}

template <ffi::DataType DT>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> w, ffi::Buffer<ffi::S32> table,
                   ffi::ResultBuffer<DT> y) {
  using T = ffi::NativeType<DT>;
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  const int64_t n_batch = xd[0], n_in = xd[1], n_chan = xd[2];
  const int64_t cin_g = wd[0], n_taps = wd[1], cout = wd[2], n_out = yd[1];
  const T* xp = x.typed_data();
  const T* wp = w.typed_data();
  T* yp = y->typed_data();
  const Plan plan(table.typed_data());
  auto ch = std::make_shared<Channels>(n_chan, cin_g, cout, n_taps * cout);
  parallel_chunks(
      pool, n_batch, [n_chan, n_taps]() { return std::make_shared<Events<T>>(n_chan, n_taps); },
      [=](std::shared_ptr<Events<T>> ev, int64_t n) {
        T* yn = yp + n * n_out * cout;
        std::fill(yn, yn + n_out * cout, T(0));
        walk_nonzeros(xp + n * n_in * n_chan, 0, n_in, n_chan, *ch, *ev, [&](int64_t p, Events<T>& e) {
          const int64_t pl = p / plan.n_last, pz = p - pl * plan.n_last;
          const int64_t a0 = plan.lead_offsets[pl], a1 = plan.lead_offsets[pl + 1];
          const int64_t b0 = plan.last_offsets[pz], b1 = plan.last_offsets[pz + 1];
          if (a0 == a1 || b0 == b1) return;
          e.pair_up(plan, a0, a1, b0, b1, cout, cout);
          e.scatter(yn, wp, true, ch->cout_g);
        });
      });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> gy, ffi::Buffer<ffi::S32> table,
                      ffi::ResultBuffer<DT> dw) {
  using T = ffi::NativeType<DT>;
  const auto xd = x.dimensions(), gd = gy.dimensions(), dd = dw->dimensions();
  const int64_t n_batch = xd[0], n_in = xd[1], n_chan = xd[2];
  const int64_t n_out = gd[1], cout = gd[2], n_taps = dd[0], cin_g = dd[1];
  const int64_t size = n_taps * cin_g * cout, tap_stride = cin_g * cout;
  const T* xp = x.typed_data();
  const T* gp = gy.typed_data();
  T* dwp = dw->typed_data();
  const Plan plan(table.typed_data());
  auto ch = std::make_shared<Channels>(n_chan, cin_g, cout, cout);
  // Chunks of consecutive input positions (over the whole batch); every thread that takes a chunk
  // accumulates into a partial gradient of its own, summed into dw at the end.
  const int64_t total = n_batch * n_in;
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(total, 4 * std::max<int64_t>(1, pool.num_threads())));
  struct Partial {
    Events<T> ev;
    std::vector<T> acc;
    Partial(int64_t n_chan, int64_t n_taps, int64_t size) : ev(n_chan, n_taps), acc(size, T(0)) {}
  };
  auto partials = std::make_shared<std::vector<std::shared_ptr<Partial>>>();
  auto lock = std::make_shared<std::mutex>();
  parallel_chunks(
      pool, n_chunks,
      [=]() {
        auto part = std::make_shared<Partial>(n_chan, n_taps, size);
        std::lock_guard<std::mutex> guard(*lock);
        partials->push_back(part);
        return part;
      },
      [=](std::shared_ptr<Partial> part, int64_t chunk) {
        const int64_t first = chunk * total / n_chunks, last = (chunk + 1) * total / n_chunks;
        walk_nonzeros(xp, first, last, n_chan, *ch, part->ev, [&](int64_t pos, Events<T>& e) {
          const int64_t n = pos / n_in, p = pos - n * n_in;
          const int64_t pl = p / plan.n_last, pz = p - pl * plan.n_last;
          const int64_t a0 = plan.lead_offsets[pl], a1 = plan.lead_offsets[pl + 1];
          const int64_t b0 = plan.last_offsets[pz], b1 = plan.last_offsets[pz + 1];
          if (a0 == a1 || b0 == b1) return;
          e.pair_up(plan, a0, a1, b0, b1, tap_stride, cout);
          e.scatter(part->acc.data(), gp + n * n_out * cout, false, ch->cout_g);
        });
      });
  std::fill(dwp, dwp + size, T(0));
  for (const auto& part : *partials) axpy(dwp, part->acc.data(), T(1), size);
  return ffi::Error::Success();
}

}  // namespace

#define BRAINCONV_EVENT_HANDLER(NAME, FN, DT)                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN<ffi::DT>,                                                  \
                                ffi::Ffi::Bind()                                                    \
                                    .Ctx<ffi::ThreadPool>()                                         \
                                    .Arg<ffi::Buffer<ffi::DT>>()                                    \
                                    .Arg<ffi::Buffer<ffi::DT>>()                                    \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                   \
                                    .Ret<ffi::Buffer<ffi::DT>>());

BRAINCONV_EVENT_HANDLER(BrainconvEventForwardF32, Forward, F32)
BRAINCONV_EVENT_HANDLER(BrainconvEventForwardF64, Forward, F64)
BRAINCONV_EVENT_HANDLER(BrainconvEventWeightGradF32, WeightGrad, F32)
BRAINCONV_EVENT_HANDLER(BrainconvEventWeightGradF64, WeightGrad, F64)
