// Shared by the CPU scan kernels: a (batch, channels, time) tensor read and written in its own layout, a block of
// channels by positions at a time, through a channel-major local buffer.
//
// The scans walk each channel through time, so they want each channel's positions side by side; the projections
// around them produce and take time-major (batch, time, channels) tensors. Copying a block into a small buffer
// (gather) and back (scatter) does the transposition where the block is in cache, instead of a separate pass over
// the whole tensor before and after the kernel. On AVX-512, a time-major block goes through 16 x 16 transposes in
// registers; other layouts, float64 and the edges of a block go element by element.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 16: four rounds of shuffles within registers.
inline void transpose16x16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {  // interleave rows in pairs, 32-bit elements
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then in fours, 64-bit pairs
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int h = 0; h < 16; h += 8) {  // then 128-bit lanes across rows 4 apart
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {  // and across rows 8 apart
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * dst_stride, r[i]);
}
#endif

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.
template <typename T>
inline void transpose_block(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows, int64_t cols) {
  int64_t full_rows = 0, full_cols = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    full_rows = rows - rows % 16, full_cols = cols - cols % 16;
    for (int64_t i = 0; i < full_rows; i += 16)
      for (int64_t j = 0; j < full_cols; j += 16)
        transpose16x16(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
  }
#endif
  for (int64_t i = 0; i < rows; ++i) {  // what the 16 x 16 tiles left: the last columns, then the last rows
    for (int64_t j = i < full_rows ? full_cols : 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

// A (batch, channels, time) tensor with any strides.
template <typename T>
struct ChannelsTime {
  T* data;
  int64_t batch_stride, channel_stride, time_stride;

  // An empty tensor (an absent optional input) gives a null accessor.
  explicit ChannelsTime(const at::Tensor& t)
      : data(t.numel() ? t.data_ptr<T>() : nullptr), batch_stride(t.numel() ? t.stride(0) : 0),
        channel_stride(t.numel() ? t.stride(1) : 0), time_stride(t.numel() ? t.stride(2) : 0) {}

  bool time_major() const { return channel_stride == 1 && time_stride != 1; }

  // block[k * width + i] = this[b, d0 + k, first + i] for k < count, i < stop - first.
  void gather(int64_t b, int64_t d0, int64_t count, int64_t first, int64_t stop, T* block, int64_t width) const {
    const T* origin = data + b * batch_stride + d0 * channel_stride + first * time_stride;
    if (time_major()) return transpose_block<T>(origin, time_stride, block, width, stop - first, count);
    for (int64_t k = 0; k < count; ++k)
      for (int64_t i = 0; i < stop - first; ++i) block[k * width + i] = origin[k * channel_stride + i * time_stride];
  }

  // this[b, d0 + k, first + i] = block[k * width + i]: the inverse of gather.
  void scatter(int64_t b, int64_t d0, int64_t count, int64_t first, int64_t stop, const T* block, int64_t width) const {
    T* origin = data + b * batch_stride + d0 * channel_stride + first * time_stride;
    if (time_major()) return transpose_block<T>(block, width, origin, time_stride, count, stop - first);
    for (int64_t k = 0; k < count; ++k)
      for (int64_t i = 0; i < stop - first; ++i) origin[k * channel_stride + i * time_stride] = block[k * width + i];
  }
};
