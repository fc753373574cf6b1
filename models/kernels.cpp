// ablate's fused CPU kernels for runs of memory-bound ops of ablate's blocks, on bf16 tensors in
// channels_last (NHWC) order: in training (batch statistics) forward and backward, in evaluation
// (running statistics) forward; models/kernels.py compiles this file and calls it (its docstring
// says when).
//
// - block: the conv's output in, the block's output out. Forward: pooled values, the position of
//   each maximum (0-3, one byte) and per-image channel sums in one pass, the variance in a second,
//   the normalized and rectified output in a third. Backward: the sums of batch norm's gradient in
//   one pass, then each 2x2 window of the input's gradient written whole (the maximum's entry and
//   three zeros), so that no zero fill comes first.
// - stem: the same with the convolution itself (K x K, stride 1, zero padding K/2, no bias) of
//   one input channel computed inside: its full-size output is never written, and the weight's
//   gradient is summed from each window's maximum alone.
// - relu_pool: ReLU -> 2x2 max pooling in one pass; backward, each window written whole.
// - bn_relu: batch norm -> ReLU of any size, its channels laid flat (see Flat): two passes of sums
//   and one of output forward, one of sums and one of output backward.
//
// Every sum is taken per image in a fixed order, then over the images in order in double, so that
// results do not depend on the number of threads. Values are rounded to bf16 where autocast's
// eager ops round them (the conv's output, the pooled values, the gradients passed on).
// Channels go LANES at a time in GCC vector types (16 with AVX-512, else 8): but for bn_relu, the
// number of channels must be a multiple of LANES.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#if defined(__AVX512F__)
#define LANES 16  // channels at a time: one AVX-512 register of floats
#else
#define LANES 8
#endif
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));
typedef uint16_t vh __attribute__((vector_size(2 * LANES)));
typedef uint8_t vb __attribute__((vector_size(LANES)));

static const vf ZERO = {};

static inline vf load(const uint16_t *p) {
  vh h;
  memcpy(&h, p, sizeof h);
  vu w = __builtin_convertvector(h, vu) << 16;
  vf f;
  memcpy(&f, &w, sizeof f);
  return f;
}
static inline vf loadf(const float *p) {
  vf f;
  memcpy(&f, p, sizeof f);
  return f;
}
static inline void storef(float *p, vf f) { memcpy(p, &f, sizeof f); }
// rounded to bf16 (its top 16 bits, the rest zero), to nearest even as torch rounds; a NaN stays a NaN
static inline vf rounded(vf f) {
  vu u;
  memcpy(&u, &f, sizeof u);
  vu r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  r = (f != f) ? (u | 0x400000u) & 0xffff0000u : r;
  memcpy(&f, &r, sizeof f);
  return f;
}
// the top 16 bits of each value: the bf16 of a value rounded already
static inline vh top(vf f) {
  vu u;
  memcpy(&u, &f, sizeof u);
  return __builtin_convertvector(u >> 16, vh);
}
static inline void store_exact(uint16_t *p, vf f) {  // f holds bf16 values
  vh h = top(f);
  memcpy(p, &h, sizeof h);
}
static inline void store(uint16_t *p, vf f) { store_exact(p, rounded(f)); }
static inline float round_bf16(float f) {
  vf v = ZERO + f;
  return rounded(v)[0];
}
static inline void pick(vf v, int at, vf &m, vi &k) {  // the first maximum; a NaN wins
  vi take = (v > m) | (v != v);
  m = take ? v : m;
  k = take ? at : k;
}

// The pooled maximum m of LANES channels and the place of each (0-3) at offset o.
static inline void put_max(uint16_t *pooled, uint8_t *arg, long o, vf m, vi k) {
  store_exact(pooled + o, m);  // a bf16 value already
  vb kb = __builtin_convertvector(k, vb);
  memcpy(arg + o, &kb, sizeof kb);
}
static inline vi load_arg(const uint8_t *arg) {
  vb kb;
  memcpy(&kb, arg, sizeof kb);
  return __builtin_convertvector(kb, vi);
}

struct Shape {
  long N, H, W, C, Ho, Wo, P;
  Shape(int n, int h, int w, int c) : N(n), H(h), W(w), C(c), Ho(h / 2), Wo(w / 2), P((long)(h / 2) * (w / 2)) {}
  long in(long n, long y, long x) const { return ((n * H + y) * W + x) * C; }      // input, (y, x)
  long out(long n, long i, long j) const { return ((n * Ho + i) * Wo + j) * C; }   // pooled, (i, j)
};

// The gradient of a 2x2 window at pooled (i, j), channels c..c+LANES-1, written whole: d (bf16) at
// each lane's maximum (its place k), zeros at the three others, so that no zero fill comes first.
static inline void put_window(const Shape &s, uint16_t *gin, long n, long i, long j, long c, vh d, vi k) {
  const vh kh = __builtin_convertvector(k, vh), none = {};
  uint16_t *a = gin + s.in(n, 2 * i, 2 * j) + c;
  const vh w0 = kh == 0 ? d : none, w1 = kh == 1 ? d : none, w2 = kh == 2 ? d : none, w3 = kh == 3 ? d : none;
  memcpy(a, &w0, sizeof w0);
  memcpy(a + s.C, &w1, sizeof w1);
  memcpy(a + s.W * s.C, &w2, sizeof w2);
  memcpy(a + s.W * s.C + s.C, &w3, sizeof w3);
}

// The maximum m of the 2x2 window at pooled (i, j) of image n, channels c..c+LANES-1, and its place k
// (0-3): the first maximum, as torch's pooling takes it; a NaN wins.
static inline void window_max(const Shape &s, const uint16_t *x, long n, long i, long j, long c, vf &m, vi &k) {
  const uint16_t *a = x + s.in(n, 2 * i, 2 * j) + c;
  m = load(a);
  k = vi{};
  pick(load(a + s.C), 1, m, k);
  pick(load(a + s.W * s.C), 2, m, k);
  pick(load(a + s.W * s.C + s.C), 3, m, k);
}

// body(n, i, j, c) for every image n, pooled place (i, j) and LANES channels c, in parallel.
template <class Body>
static void over_windows(const Shape &s, int threads, Body body) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < s.N; n++)
    for (long i = 0; i < s.Ho; i++)
      for (long j = 0; j < s.Wo; j++)
        for (long c = 0; c < s.C; c += LANES) body(n, i, j, c);
}

// out = ReLU(pooled * scale + shift), per channel.
static void affine_relu(const Shape &s, const float *scale, const float *shift, const uint16_t *pooled, uint16_t *out,
                        int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < s.N; n++) {
    const uint16_t *p = pooled + n * s.P * s.C;
    uint16_t *o = out + n * s.P * s.C;
    for (long c = 0; c < s.C; c += LANES) {
      vf a = loadf(scale + c), b = loadf(shift + c);
      for (long q = 0; q < s.P; q++) {
        vf y = load(p + q * s.C + c) * a + b;
        store(o + q * s.C + c, y > 0 ? y : ZERO);
      }
    }
  }
}

// The first pass's end and the two after it: mean from the per-image sums in `partial` [N][C],
// the variance, the normalized and rectified output; the running mean and (unbiased) variance
// moved by `momentum`.
static void normalize(const Shape &s, const float *gamma, const float *beta, float eps, float momentum,
                      float *running_mean, float *running_var, const uint16_t *pooled, float *partial, float *mean,
                      float *invstd, uint16_t *out, int threads) {
  const double M = (double)s.N * s.P;
  for (long c = 0; c < s.C; c++) {
    double t = 0;
    for (long n = 0; n < s.N; n++) t += partial[n * s.C + c];
    mean[c] = (float)(t / M);
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < s.N; n++) {
    const uint16_t *p = pooled + n * s.P * s.C;
    for (long c = 0; c < s.C; c += LANES) {
      vf acc = ZERO, mu = loadf(mean + c);
      for (long q = 0; q < s.P; q++) {
        vf d = load(p + q * s.C + c) - mu;
        acc += d * d;
      }
      storef(partial + n * s.C + c, acc);
    }
  }
  for (long c = 0; c < s.C; c++) {
    double t = 0;
    for (long n = 0; n < s.N; n++) t += partial[n * s.C + c];
    invstd[c] = (float)(1.0 / sqrt(t / M + eps));
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];  // as nn.BatchNorm2d in training
    running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)(t / (M > 1 ? M - 1 : 1));
  }
  std::vector<float> scale(s.C), shift(s.C);
  for (long c = 0; c < s.C; c++) {
    scale[c] = invstd[c] * gamma[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  affine_relu(s, scale.data(), shift.data(), pooled, out, threads);
}

// Evaluation: the pooled values normalized with the running statistics, rectified.
static void infer(const Shape &s, const float *gamma, const float *beta, float eps, const float *running_mean,
                  const float *running_var, const uint16_t *pooled, uint16_t *out, int threads) {
  std::vector<float> scale(s.C), shift(s.C);
  for (long c = 0; c < s.C; c++) {
    scale[c] = (float)(gamma[c] / sqrt((double)running_var[c] + eps));
    shift[c] = beta[c] - running_mean[c] * scale[c];
  }
  affine_relu(s, scale.data(), shift.data(), pooled, out, threads);
}

// The first pass of the block: each 2x2 window's maximum (pooled) and its place (arg), and the
// per-image sums of the pooled values in `partial` [N][C].
static void block_pool(const Shape &s, const uint16_t *x, uint16_t *pooled, uint8_t *arg, float *partial, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < s.N; n++) {
    for (long c = 0; c < s.C; c += LANES) {
      vf acc = ZERO;
      for (long i = 0; i < s.Ho; i++)
        for (long j = 0; j < s.Wo; j++) {
          vf m;
          vi k;
          window_max(s, x, n, i, j, c, m, k);
          put_max(pooled, arg, s.out(n, i, j) + c, m, k);
          acc += m;
        }
      storef(partial + n * s.C + c, acc);
    }
  }
}

// Backward's first pass: dbeta and dgamma (sums over the images of sums over the pixels), and in
// `coef` [3][C] the factors of the pooled values' gradient:
// d = gamma * invstd * (g' - dbeta / M - xhat * dgamma / M), g' the output's gradient where it is positive.
static void norm_sums(const Shape &s, const uint16_t *gout, const uint16_t *pooled, const float *gamma,
                      const float *beta, const float *mean, const float *invstd, float *partial, float *dgamma,
                      float *dbeta, float *coef, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < s.N; n++) {
    const uint16_t *p = pooled + n * s.P * s.C, *g = gout + n * s.P * s.C;
    for (long c = 0; c < s.C; c += LANES) {
      vf mu = loadf(mean + c), is = loadf(invstd + c), ga = loadf(gamma + c), be = loadf(beta + c);
      vf sb = ZERO, sg = ZERO;
      for (long q = 0; q < s.P; q++) {
        vf xh = (load(p + q * s.C + c) - mu) * is;
        vf gy = xh * ga + be > 0 ? load(g + q * s.C + c) : ZERO;
        sb += gy;
        sg += gy * xh;
      }
      storef(partial + n * 2 * s.C + c, sb);
      storef(partial + n * 2 * s.C + s.C + c, sg);
    }
  }
  const double M = (double)s.N * s.P;
  for (long c = 0; c < s.C; c++) {
    double tb = 0, tg = 0;
    for (long n = 0; n < s.N; n++) {
      tb += partial[n * 2 * s.C + c];
      tg += partial[n * 2 * s.C + s.C + c];
    }
    dbeta[c] = (float)tb;
    dgamma[c] = (float)tg;
    coef[c] = gamma[c] * invstd[c];
    coef[s.C + c] = (float)(tb / M);
    coef[2 * s.C + c] = (float)(tg / M);
  }
}

// The gradient of the pooled value at pooled offset q, channels c..c+LANES-1, rounded to bf16.
static inline vf pooled_grad(const Shape &s, long q, long c, const uint16_t *gout, const uint16_t *pooled,
                              const float *gamma, const float *beta, const float *mean, const float *invstd,
                              const float *coef) {
  vf xh = (load(pooled + q) - loadf(mean + c)) * loadf(invstd + c);
  vf gy = xh * loadf(gamma + c) + loadf(beta + c) > 0 ? load(gout + q) : ZERO;
  return rounded(loadf(coef + c) * (gy - loadf(coef + s.C + c) - xh * loadf(coef + 2 * s.C + c)));
}

extern "C" {

// x: the conv's output [N][H][W][C] bf16, H and W even. Writes pooled and arg [N][H/2][W/2][C]
// (saved for backward), mean and invstd [C] and out [N][H/2][W/2][C], and moves the running
// statistics [C]. partial: scratch of N * C floats.
void block_forward(const uint16_t *x, int N, int H, int W, int C, const float *gamma, const float *beta, float eps,
                   float momentum, float *running_mean, float *running_var, uint16_t *pooled, uint8_t *arg,
                   float *partial, float *mean, float *invstd, uint16_t *out, int threads) {
  const Shape s(N, H, W, C);
  block_pool(s, x, pooled, arg, partial, threads);
  normalize(s, gamma, beta, eps, momentum, running_mean, running_var, pooled, partial, mean, invstd, out, threads);
}

// Evaluation: block_forward's output with the running statistics; pooled, arg and partial are scratch.
void block_infer(const uint16_t *x, int N, int H, int W, int C, const float *gamma, const float *beta, float eps,
                 const float *running_mean, const float *running_var, uint16_t *pooled, uint8_t *arg, float *partial,
                 uint16_t *out, int threads) {
  const Shape s(N, H, W, C);
  block_pool(s, x, pooled, arg, partial, threads);
  infer(s, gamma, beta, eps, running_mean, running_var, pooled, out, threads);
}

// gout: the output's gradient [N][H/2][W/2][C] bf16. Writes gin [N][H][W][C] bf16 (the conv
// output's gradient), dgamma and dbeta [C]. partial: scratch of N * 2 * C + 3 * C floats.
void block_backward(const uint16_t *gout, const uint16_t *pooled, const uint8_t *arg, int N, int H, int W, int C,
                    const float *gamma, const float *beta, const float *mean, const float *invstd, float *partial,
                    float *dgamma, float *dbeta, uint16_t *gin, int threads) {
  const Shape s(N, H, W, C);
  float *coef = partial + s.N * 2 * s.C;
  norm_sums(s, gout, pooled, gamma, beta, mean, invstd, partial, dgamma, dbeta, coef, threads);
  over_windows(s, threads, [&](long n, long i, long j, long c) {
    const long q = s.out(n, i, j) + c;
    vf d = pooled_grad(s, q, c, gout, pooled, gamma, beta, mean, invstd, coef);
    put_window(s, gin, n, i, j, c, top(d), load_arg(arg + q));  // d is rounded: its bf16
  });
}

}  // extern "C"

// relu_pool: ReLU -> 2x2 max pooling of a bf16 channels_last tensor (a conv block ending in ReLU, and
// the pooling that closes its stage): the window's maximum (the first, as torch's pooling takes it)
// and its place in one pass, rectified; backward, each window's gradient written whole: the
// output's gradient at the maximum where the output is positive, zeros elsewhere.
extern "C" {

// x [N][H][W][C] bf16, H and W even. Writes out and arg [N][H/2][W/2][C].
void relu_pool_forward(const uint16_t *x, int N, int H, int W, int C, uint16_t *out, uint8_t *arg, int threads) {
  const Shape s(N, H, W, C);
  over_windows(s, threads, [&](long n, long i, long j, long c) {
    vf m;
    vi k;
    window_max(s, x, n, i, j, c, m, k);
    put_max(out, arg, s.out(n, i, j) + c, m > 0 ? m : ZERO, k);
  });
}

// gout, out and arg [N][H/2][W/2][C]. Writes gin [N][H][W][C] bf16.
void relu_pool_backward(const uint16_t *gout, const uint16_t *out, const uint8_t *arg, int N, int H, int W, int C,
                        uint16_t *gin, int threads) {
  const Shape s(N, H, W, C);
  over_windows(s, threads, [&](long n, long i, long j, long c) {
    const long q = s.out(n, i, j) + c;
    put_window(s, gin, n, i, j, c, top(load(out + q) > 0 ? load(gout + q) : ZERO), load_arg(arg + q));
  });
}

}  // extern "C"

// Image n of the stem's one-channel input x [N][H][W] bf16, padded with zeros into `image` [H + K - 1][W + K - 1] floats.
static void pad(const uint16_t *x, long n, int H, int W, int K, float *image) {
  const long Wp = W + K - 1, r = K / 2;
  std::fill(image, image + (H + K - 1) * Wp, 0.f);
  for (long y = 0; y < H; y++)
    for (long xx = 0; xx < W; xx++) {
      uint32_t u = (uint32_t)x[(n * H + y) * W + xx] << 16;
      memcpy(&image[(y + r) * Wp + xx + r], &u, 4);
    }
}

// body(n, c, image) for every image n, padded (a buffer per thread), and every LANES channels c, in parallel.
template <int K, class Body>
static void over_padded_images(const uint16_t *x, const Shape &s, int threads, Body body) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> image((s.H + K - 1) * (s.W + K - 1));
#pragma omp for schedule(static)
    for (long n = 0; n < s.N; n++) {
      pad(x, n, s.H, s.W, K, image.data());
      for (long c = 0; c < s.C; c += LANES) body(n, c, image.data());
    }
  }
}

// Input (y, x) of the 2x2 window whose top left corner is `at` in the padded image, in every lane.
static inline vf bcast(const float *at, long Wp, int y, int x) { return ZERO + at[y * Wp + x]; }

template <int K>
static void stem_pool(const uint16_t *x, const float *wt, const Shape &s, uint16_t *pooled, uint8_t *arg,
                      float *partial, int threads) {
  const long Wp = s.W + K - 1;
  over_padded_images<K>(x, s, threads, [&](long n, long c, const float *image) {
    vf w[K * K];
#pragma GCC unroll 32
    for (int t = 0; t < K * K; t++) w[t] = loadf(wt + t * s.C + c);
    vf acc = ZERO;
    for (long i = 0; i < s.Ho; i++)
      for (long j = 0; j < s.Wo; j++) {
        const float *corner = image + 2 * i * Wp + 2 * j;
        vf v[4];  // the conv's outputs at the window's 4 places, unrolled so that all stay in registers
#pragma GCC unroll 4
        for (int at = 0; at < 4; at++) v[at] = ZERO;
#pragma GCC unroll 8
        for (int ky = 0; ky < K; ky++)
#pragma GCC unroll 8
          for (int kx = 0; kx < K; kx++)
#pragma GCC unroll 4
            for (int at = 0; at < 4; at++) v[at] += bcast(corner, Wp, ky + at / 2, kx + at % 2) * w[ky * K + kx];
        vf m = rounded(v[0]);  // the eager conv's bf16 outputs: their ties are the pooling's
        vi k = {};
#pragma GCC unroll 4
        for (int at = 1; at < 4; at++) pick(rounded(v[at]), at, m, k);
        put_max(pooled, arg, s.out(n, i, j) + c, m, k);
        acc += m;
      }
    storef(partial + n * s.C + c, acc);
  });
}

template <int K>
static void stem_weight_grad(const uint16_t *gout, const uint16_t *pooled, const uint8_t *arg, const uint16_t *x,
                             const Shape &s, const float *gamma, const float *beta, const float *mean,
                             const float *invstd, const float *coef, float *partial, long per, int threads) {
  const long Wp = s.W + K - 1;
  over_padded_images<K>(x, s, threads, [&](long n, long c, const float *image) {
    vf acc[K * K];
#pragma GCC unroll 32
    for (int t = 0; t < K * K; t++) acc[t] = ZERO;
    for (long i = 0; i < s.Ho; i++)
      for (long j = 0; j < s.Wo; j++) {
        const long q = s.out(n, i, j) + c;
        vf d = pooled_grad(s, q, c, gout, pooled, gamma, beta, mean, invstd, coef);
        vi k = load_arg(arg + q);
        const float *corner = image + 2 * i * Wp + 2 * j;
#pragma GCC unroll 4
        for (int at = 0; at < 4; at++) {
          vf g = k == at ? d : ZERO;
#pragma GCC unroll 8
          for (int ky = 0; ky < K; ky++)
#pragma GCC unroll 8
            for (int kx = 0; kx < K; kx++) acc[ky * K + kx] += g * bcast(corner, Wp, ky + at / 2, kx + at % 2);
        }
      }
#pragma GCC unroll 32
    for (int t = 0; t < K * K; t++) storef(partial + n * per + t * s.C + c, acc[t]);
  });
}

// The stem's sizes (stem_takes): one input channel, kernel 3 or 5. With 3 input channels (RGB) a
// convolution here is slower than torch's followed by the block kernel.
#define STEM_SIZES(F, ...)   \
  if (K == 3)                \
    F<3>(__VA_ARGS__);       \
  else                       \
    F<5>(__VA_ARGS__);

// The weight [C][1][K][K] rounded to bf16 as autocast rounds it, as [K][K][C], after the N * C
// floats of `partial`.
static float *stem_weight(const float *weight, int K, const Shape &s, float *partial) {
  const long taps = (long)K * K;
  float *wt = partial + s.N * s.C;
  for (long c = 0; c < s.C; c++)
    for (long t = 0; t < taps; t++) wt[t * s.C + c] = round_bf16(weight[c * taps + t]);
  return wt;
}

extern "C" {

int lanes(void) { return LANES; }

int stem_takes(int CI, int K) { return CI == 1 && (K == 3 || K == 5); }

// x: the block's input [N][H][W] bf16 (one channel, CI = 1: stem_takes); weight: the conv's
// [C][1][K][K] floats, rounded to bf16 as autocast rounds it. Writes what block_forward writes.
// partial: scratch of N * C + K * K * C floats.
void stem_forward(const uint16_t *x, int K, const float *weight, int N, int H, int W, int C,
                  const float *gamma, const float *beta, float eps, float momentum, float *running_mean,
                  float *running_var, uint16_t *pooled, uint8_t *arg, float *partial, float *mean, float *invstd,
                  uint16_t *out, int threads) {
  const Shape s(N, H, W, C);
  float *wt = stem_weight(weight, K, s, partial);
  STEM_SIZES(stem_pool, x, wt, s, pooled, arg, partial, threads)
  normalize(s, gamma, beta, eps, momentum, running_mean, running_var, pooled, partial, mean, invstd, out, threads);
}

// Evaluation: stem_forward's output with the running statistics; pooled, arg and partial are scratch.
void stem_infer(const uint16_t *x, int K, const float *weight, int N, int H, int W, int C, const float *gamma,
                const float *beta, float eps, const float *running_mean, const float *running_var, uint16_t *pooled,
                uint8_t *arg, float *partial, uint16_t *out, int threads) {
  const Shape s(N, H, W, C);
  float *wt = stem_weight(weight, K, s, partial);
  STEM_SIZES(stem_pool, x, wt, s, pooled, arg, partial, threads)
  infer(s, gamma, beta, eps, running_mean, running_var, pooled, out, threads);
}

// Writes dgamma, dbeta [C] and the conv weight's gradient dweight [C][1][K][K]. partial: scratch
// of N * K * K * C + 3 * C floats.
void stem_backward(const uint16_t *gout, const uint16_t *pooled, const uint8_t *arg, const uint16_t *x, int K,
                   int N, int H, int W, int C, const float *gamma, const float *beta, const float *mean,
                   const float *invstd, float *partial, float *dgamma, float *dbeta, float *dweight, int threads) {
  const Shape s(N, H, W, C);
  const long taps = (long)K * K, per = taps * s.C;
  float *coef = partial + s.N * per;
  norm_sums(s, gout, pooled, gamma, beta, mean, invstd, partial, dgamma, dbeta, coef, threads);
  STEM_SIZES(stem_weight_grad, gout, pooled, arg, x, s, gamma, beta, mean, invstd, coef, partial, per, threads)
  for (long t = 0; t < taps; t++)
    for (long c = 0; c < s.C; c++) {
      double sum = 0;
      for (long n = 0; n < s.N; n++) sum += partial[n * per + t * s.C + c];
      dweight[c * taps + t] = (float)sum;
    }
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// bn_relu: batch norm -> ReLU of a bf16 channels_last tensor of any size, C channels.
//
// Each image's values are taken as one flat row of P * C values, LANES at a time. A vector's lanes
// belong to channels (v * LANES + l) % C, so the per-channel factors repeat every T vectors, T =
// lcm(C, LANES) / LANES: `tiled` lays them out that way. Every C with T <= MAX_PERIOD works, as long
// as an image's row holds whole periods (bn_relu_takes).

static const long MAX_PERIOD = 16;

struct Flat {
  long N, P, C, T, E;  // images, pixels and channels per image, period (vectors), values per image
  Flat(int n, int p, int c) : N(n), P(p), C(c) {
    long l = c;
    while (l % LANES) l += c;  // lcm(C, LANES)
    T = l / LANES;
    E = (long)p * c;
  }
};

// per[c] laid out as T vectors: lane l of vector t holds per[(t * LANES + l) % C]
static void tiled(const Flat &f, const float *per, vf *out) {
  for (long t = 0; t < f.T; t++)
    for (long l = 0; l < LANES; l++) out[t][l] = per[(t * LANES + l) % f.C];
}

// partial[n][2][C]: the two sums over image n of what `value(o, t, a, b)` sets for the vector at offset
// o (of phase t), folded by channel, in a fixed order
template <class Value>
static void channel_sums(const Flat &f, float *partial, int threads, Value value) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < f.N; n++) {
    vf acc[2][MAX_PERIOD];
    for (long t = 0; t < f.T; t++) acc[0][t] = acc[1][t] = ZERO;
    for (long v = n * f.E; v < (n + 1) * f.E; v += f.T * LANES)
      for (long t = 0; t < f.T; t++) {
        vf a, b;
        value(v + t * LANES, t, a, b);
        acc[0][t] += a;
        acc[1][t] += b;
      }
    float *p = partial + n * 2 * f.C;
    std::fill(p, p + 2 * f.C, 0.f);
    for (long k = 0; k < 2; k++)
      for (long t = 0; t < f.T; t++)
        for (long l = 0; l < LANES; l++) p[k * f.C + (t * LANES + l) % f.C] += acc[k][t][l];
  }
}

// over the images in order, in double: sum[k][c] = the sum over n of partial[n][k][c]
static void over_images(const Flat &f, const float *partial, double *sum) {
  std::fill(sum, sum + 2 * f.C, 0.0);
  for (long n = 0; n < f.N; n++)
    for (long c = 0; c < 2 * f.C; c++) sum[c] += partial[n * 2 * f.C + c];
}

// out = ReLU(x * scale + shift), rounded to bf16
static void bn_relu_apply(const Flat &f, const uint16_t *x, const float *scale, const float *shift, uint16_t *out,
                          int threads) {
  vf a[MAX_PERIOD], b[MAX_PERIOD];
  tiled(f, scale, a);
  tiled(f, shift, b);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < f.N; n++) {
    const uint16_t *row = x + n * f.E;
    uint16_t *o = out + n * f.E;
    for (long v = 0; v < f.E; v += f.T * LANES)
      for (long t = 0; t < f.T; t++) {
        vf y = load(row + v + t * LANES) * a[t] + b[t];
        store(o + v + t * LANES, y > 0 ? y : ZERO);
      }
  }
}

extern "C" {

int bn_relu_takes(int P, int C) {
  const Flat f(1, P, C);
  return f.T <= MAX_PERIOD && f.E % (f.T * LANES) == 0;
}

// x: [N][P][C] bf16 (batch norm's input). Writes mean and invstd [C] (saved for backward) and out
// [N][P][C], and moves the running statistics as nn.BatchNorm2d does in training. partial: scratch
// of N * 2 * C floats.
void bn_relu_forward(const uint16_t *x, int N, int P, int C, const float *gamma, const float *beta, float eps,
                     float momentum, float *running_mean, float *running_var, float *partial, float *mean,
                     float *invstd, uint16_t *out, int threads) {
  const Flat f(N, P, C);
  const double M = (double)f.N * f.P;
  std::vector<double> sum(2 * f.C);
  channel_sums(f, partial, threads, [&](long o, long, vf &a, vf &b) {
    a = load(x + o);
    b = ZERO;
  });
  over_images(f, partial, sum.data());
  for (long c = 0; c < f.C; c++) mean[c] = (float)(sum[c] / M);
  vf mu[MAX_PERIOD];
  tiled(f, mean, mu);
  channel_sums(f, partial, threads, [&](long o, long t, vf &a, vf &b) {
    vf d = load(x + o) - mu[t];
    a = d * d;
    b = ZERO;
  });
  over_images(f, partial, sum.data());
  std::vector<float> scale(f.C), shift(f.C);
  for (long c = 0; c < f.C; c++) {
    invstd[c] = (float)(1.0 / sqrt(sum[c] / M + eps));
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)(sum[c] / (M > 1 ? M - 1 : 1));
    scale[c] = invstd[c] * gamma[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  bn_relu_apply(f, x, scale.data(), shift.data(), out, threads);
}

// Evaluation: with the running statistics.
void bn_relu_infer(const uint16_t *x, int N, int P, int C, const float *gamma, const float *beta, float eps,
                   const float *running_mean, const float *running_var, uint16_t *out, int threads) {
  const Flat f(N, P, C);
  std::vector<float> scale(f.C), shift(f.C);
  for (long c = 0; c < f.C; c++) {
    scale[c] = (float)(gamma[c] / sqrt((double)running_var[c] + eps));
    shift[c] = beta[c] - running_mean[c] * scale[c];
  }
  bn_relu_apply(f, x, scale.data(), shift.data(), out, threads);
}

// gout: the output's gradient [N][P][C] bf16. Writes gin [N][P][C] bf16 (x's gradient), dgamma and
// dbeta [C]. partial: scratch of N * 2 * C floats.
void bn_relu_backward(const uint16_t *gout, const uint16_t *x, int N, int P, int C, const float *gamma,
                      const float *beta, const float *mean, const float *invstd, float *partial, float *dgamma,
                      float *dbeta, uint16_t *gin, int threads) {
  const Flat f(N, P, C);
  const double M = (double)f.N * f.P;
  vf mu[MAX_PERIOD], is[MAX_PERIOD], ga[MAX_PERIOD], be[MAX_PERIOD];
  tiled(f, mean, mu);
  tiled(f, invstd, is);
  tiled(f, gamma, ga);
  tiled(f, beta, be);
  auto passed = [&](long o, long t, vf &xh) {  // the output's gradient where ReLU passed it; x normalized
    xh = (load(x + o) - mu[t]) * is[t];
    return xh * ga[t] + be[t] > 0 ? load(gout + o) : ZERO;
  };
  std::vector<double> sum(2 * f.C);
  channel_sums(f, partial, threads, [&](long o, long t, vf &a, vf &b) {
    vf xh;
    a = passed(o, t, xh);
    b = a * xh;
  });
  over_images(f, partial, sum.data());
  const double *sb = sum.data(), *sg = sum.data() + f.C;
  std::vector<float> k0(f.C), k1(f.C), k2(f.C);
  for (long c = 0; c < f.C; c++) {
    dbeta[c] = (float)sb[c];
    dgamma[c] = (float)sg[c];
    k0[c] = gamma[c] * invstd[c];
    k1[c] = (float)(sb[c] / M);
    k2[c] = (float)(sg[c] / M);
  }
  vf c0[MAX_PERIOD], c1[MAX_PERIOD], c2[MAX_PERIOD];
  tiled(f, k0.data(), c0);
  tiled(f, k1.data(), c1);
  tiled(f, k2.data(), c2);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long n = 0; n < f.N; n++) {
    for (long v = n * f.E; v < (n + 1) * f.E; v += f.T * LANES)
      for (long t = 0; t < f.T; t++) {
        const long o = v + t * LANES;
        vf xh, gy = passed(o, t, xh);
        store(gin + o, c0[t] * (gy - c1[t] - xh * c2[t]));
      }
  }
}

}  // extern "C"
