// Shared by the CPU scan kernels: split a thread's range of (batch, channel) pairs into runs that
// read the same B and C, so each run can be walked chunk by chunk through time with that chunk of
// B and C in cache.
#pragma once

#include <algorithm>
#include <cstdint>

// Calls visit(first, stop) for each run [first, stop) of the pairs in [begin, end) that fall in one
// block of `group_width` consecutive pairs (pairs numbered b * channels + c, groups of
// `group_width` channels each sharing B and C).
template <typename Visit>
void for_each_group_run(int64_t group_width, int64_t begin, int64_t end, Visit visit) {
  for (int64_t first = begin; first < end;) {
    const int64_t stop = std::min(end, (first / group_width + 1) * group_width);
    visit(first, stop);
    first = stop;
  }
}
