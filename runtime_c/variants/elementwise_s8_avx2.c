/* elementwise_s8.c compiled for x86-64-v3 (AVX2) with FW_AVX2_CFLAGS, for x86-64 dispatch builds (fwedge_rt.h):
 * fw_add_s8_dispatch / fw_mul_s8_dispatch runs it on CPUs that have x86-64-v3. Its entry points take a _avx2
 * suffix. */
#define FW_VARIANT 1
#define fw_add_s8 fw_add_s8_avx2
#define fw_mul_s8 fw_mul_s8_avx2
#include "elementwise_s8.c"
#if !defined(__AVX2__) || defined(FW_CONV_VNNI)
#error "elementwise_s8_avx2.c must be compiled with -march=x86-64-v3 (FW_AVX2_CFLAGS)"
#endif
