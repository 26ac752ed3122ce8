// nnforge kernels: a tiny chunk-claiming thread pool (included by qgemv.cpp inside its anonymous namespace).
#pragma once

// ---------------------------------------------------------------- threads
// A tiny pool whose callers never wait for a thread that has not started: work is split into chunks that
// threads claim one at a time, and the caller waits only for claimed chunks. On a machine shared with
// other processes (or after fork) the caller simply does more of the chunks itself.
struct Pool {
  std::mutex job_mu;  // one job at a time
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<uint64_t> state{0};  // generation << 32 | next chunk
  std::atomic<int> nchunks{0}, done{0};
  void (*fn)(const void*, int) = nullptr;
  const void* ctx = nullptr;
  uint32_t gen = 0;
  int nworkers = 0;
};

Pool* pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static destructors at exit
  return p;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

void claim_chunks(Pool* p, uint32_t gen) {
  for (;;) {
    uint64_t s = p->state.load(std::memory_order_acquire);
    if ((uint32_t)(s >> 32) != gen || (int)(uint32_t)s >= p->nchunks.load(std::memory_order_relaxed)) return;
    if (p->state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
      p->fn(p->ctx, (int)(uint32_t)s);
      p->done.fetch_add(1, std::memory_order_release);
    }
  }
}

void worker_main(Pool* p) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t gen = (uint32_t)(p->state.load(std::memory_order_acquire) >> 32);
    for (int i = 0; i < 4000 && gen == seen; i++) {  // a short spin catches back-to-back calls
      cpu_relax();
      gen = (uint32_t)(p->state.load(std::memory_order_acquire) >> 32);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lk(p->mu);
      p->cv.wait(lk, [&] { return (uint32_t)(p->state.load() >> 32) != seen; });
      gen = (uint32_t)(p->state.load() >> 32);
    }
    seen = gen;
    claim_chunks(p, gen);
  }
}

void parallel_chunks(void (*fn)(const void*, int), const void* ctx, int nchunks, int nthreads) {
  Pool* p = pool();
  std::lock_guard<std::mutex> job(p->job_mu);
  uint32_t gen;
  {
    std::lock_guard<std::mutex> lk(p->mu);
    for (; p->nworkers < nthreads - 1; p->nworkers++) std::thread(worker_main, p).detach();
    p->fn = fn;
    p->ctx = ctx;
    p->nchunks.store(nchunks, std::memory_order_relaxed);
    p->done.store(0, std::memory_order_relaxed);
    gen = ++p->gen;
    p->state.store((uint64_t)gen << 32, std::memory_order_release);
  }
  if (nthreads > 1) p->cv.notify_all();
  claim_chunks(p, gen);
  for (int i = 0; p->done.load(std::memory_order_acquire) < nchunks; i++) {
    if (i < 20000) cpu_relax(); else sched_yield();
  }
}

