/* conv2d_s8.c compiled for x86-64-v3 (AVX2) with FW_AVX2_CFLAGS, for x86-64 dispatch builds (fwedge_rt.h):
 * fw_conv2d_s8_dispatch runs it on CPUs that have x86-64-v3. Its entry points take a _avx2
 * suffix. It reads the packed weights in the int8 pair layout. */
#define FW_VARIANT 1
#define fw_conv2d_s8 fw_conv2d_s8_avx2
#define fw_conv2d_s8_packed_size fw_conv2d_s8_packed_size_avx2
#define fw_pack_conv2d_s8_weights fw_pack_conv2d_s8_weights_avx2
#include "conv2d_s8.c"
#if !defined(__AVX2__) || defined(FW_CONV_VNNI)
#error "conv2d_s8_avx2.c must be compiled with -march=x86-64-v3 (FW_AVX2_CFLAGS)"
#endif
