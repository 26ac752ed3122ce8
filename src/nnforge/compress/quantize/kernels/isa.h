// nnforge kernels: the ISA this translation unit is built for (NNF_ISA: 2 AVX-512 VNNI, 1 AVX2, 0 portable),
// the intrinsics header, and the standard headers thread_pool.h needs (it is included inside a namespace).
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define NNF_ISA 2
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define NNF_ISA 1
#else
#define NNF_ISA 0
#endif
