// Shared by the CPU scan kernels: denormal numbers (below 1.2e-38 in float32) flushed to zero while a
// task runs.
//
// A scan's adjoint g_t = C_t dy_t + exp(delta A) g_{t+1} only decays where dy is zero, which is every
// position but the newest when a model is trained on its newest position (objective `last`): within a few
// dozen steps g falls into the denormal range, where x86 arithmetic takes a microcode assist per operation
// (about a hundred cycles). That made SIGMA's code form spend 6x longer in the scan's backward pass than
// with the same inputs and a gradient at every position. The guard sets MXCSR's flush-to-zero and
// denormals-are-zero bits for the task's thread and restores them after; a denormal is below float32's
// precision relative to any value the scan carries, so flushing it changes no result that matters. Other
// architectures run without the guard.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>

class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned int kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned int saved_;
};
#else
class FlushDenormals {};
#endif
