// Shared by the CPU scan kernels: a size (a channel's count of states, a head's width) known at compile
// time for the values models use and otherwise at run time. With the size a constant, the loops over it
// unroll completely and the values a loop carries from step to step (a state, its A, an adjoint, a
// gradient of A) can live in vector registers instead of memory: the Mamba scan's forward + backward at
// n = 32 ran 1.2x faster that way (docs/kernels.md, "The scans").
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

template <int64_t N>
struct FixedSize {
  static constexpr bool fixed = true;
  static constexpr int64_t n = N;
  static constexpr int64_t held = N;  // how many values a local copy holds (see Held)
};

struct RuntimeSize {
  static constexpr bool fixed = false;
  static constexpr int64_t held = 0;
  int64_t n;
};

// run(FixedSize<n>{}) when n is one of Sizes, else run(RuntimeSize{n}).
template <int64_t... Sizes, typename Run>
void with_size(int64_t n, Run run) {
  const bool fixed = ((n == Sizes && (run(FixedSize<Sizes>{}), true)) || ...);
  if (!fixed) run(RuntimeSize{n});
}

// A channel's n values that a chunk's loops carry from step to step, kept at `home`. With a fixed n they
// are worked on in a local copy, which the compiler can hold in registers, and written back when the
// Held goes out of scope (read-only values, const T, are only copied in); with a run-time n, at home.
template <typename T, typename Size>
class Held {
 public:
  Held(Size size, T* home) : home_(home) {
    if constexpr (Size::fixed) std::copy(home, home + size.n, local_.data());
  }
  ~Held() {
    if constexpr (Size::fixed && !std::is_const_v<T>) std::copy(local_.begin(), local_.end(), home_);
  }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

  T* get() {
    if constexpr (Size::fixed) {
      return local_.data();
    } else {
      return home_;
    }
  }

 private:
  std::array<std::remove_const_t<T>, Size::held> local_;
  T* home_;
};
