// Running a kernel's loop on the caller and a framework's thread pool together (the TensorFlow
// ops and the XLA custom calls; the PyTorch entries use OpenMP's team, adam_host.cc).
#ifndef ADAMKIT_PARALLEL_H_
#define ADAMKIT_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

namespace adamkit {

// Values (parameters, or rows' values) a chunk: ~30 µs of a float32 step's work, so that a
// helper that joins late still finds chunks to take, and a small step is one chunk on the caller.
constexpr int64_t kChunkValues = 1 << 16;

// Chunks of the compute-bound 8-bit step, in its 256-value blocks: 1,024 (~130 µs of work), as
// each chunk's start stalls its half-dozen streams on memory (chunks of 256 took ~5% longer at
// 50M parameters, 2 threads), down to 256 where a thread would otherwise get under two.
inline int64_t BlocksPerChunk(int64_t blocks, int64_t threads) {
  return std::clamp<int64_t>(blocks / (2 * std::max<int64_t>(threads, 1)), 256, 1024);
}

// Runs body(begin, end) over [0, total) in chunks of ``chunk``, on the caller and up to
// ``threads`` helpers that ``schedule`` starts on the pool; returns when every chunk is done. A
// shared counter hands out chunks, so a late or busy thread costs nothing but its own share, and
// the caller waits only for helpers that have joined (and so may be inside body); body must not
// throw, as a helper may still be inside it. Waiting for a fixed split instead (TensorFlow's
// Shard) puts a sleeping worker's wake-up on the step's path: the tutorial model's training step
// (100K parameters) took 30–50 µs more than SGD's with it, and none more with this. XLA's pool
// under TensorFlow was seen leaving a scheduled task unrun, all its threads idle, while a caller
// that waited for it hung. A helper that starts after the caller took the last chunk finds
// nothing to do and leaves without touching body, on state it shares with the caller by
// ownership.
template <typename Body>
void ParallelFor(int64_t threads, const std::function<void(std::function<void()>)>& schedule,
                 int64_t total, int64_t chunk, const Body& body) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable done;
    int64_t joined = 0;  // helpers inside body
  };
  const int64_t chunks = (total + chunk - 1) / chunk;
  const auto shared = std::make_shared<Shared>();
  auto drain = [&body, chunks, chunk, total](Shared& state) {
    for (int64_t c = state.next++; c < chunks; c = state.next++) {
      body(c * chunk, std::min(total, (c + 1) * chunk));
    }
  };
  const int64_t helpers = std::min<int64_t>(threads, chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    schedule([shared, drain, chunks] {
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (shared->next.load() >= chunks) return;  // all taken: body may be gone
        ++shared->joined;
      }
      drain(*shared);
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (--shared->joined == 0) shared->done.notify_all();
    });
  }
  drain(*shared);
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->done.wait(lock, [&] { return shared->joined == 0; });
}

}  // namespace adamkit

#endif  // ADAMKIT_PARALLEL_H_
