/* conv2d_s8.c compiled for AVX-512 VNNI with FW_VNNI_CFLAGS, for x86-64 dispatch builds (fwedge_rt.h):
 * fw_conv2d_s8_dispatch runs it on CPUs that have AVX-512 VNNI. Its entry points take a _vnni
 * suffix. It reads the packed weights in the quad layout. */
#define FW_VARIANT 1
#define fw_conv2d_s8 fw_conv2d_s8_vnni
#define fw_conv2d_s8_packed_size fw_conv2d_s8_packed_size_vnni
#define fw_pack_conv2d_s8_weights fw_pack_conv2d_s8_weights_vnni
#include "conv2d_s8.c"
#ifndef FW_CONV_VNNI_512
#error "conv2d_s8_vnni.c must be compiled with -march=x86-64-v4 -mavx512vnni (FW_VNNI_CFLAGS)"
#endif
