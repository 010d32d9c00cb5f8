/* depthwise_s8.c compiled for AVX-512 VNNI with FW_VNNI_CFLAGS, for x86-64 dispatch builds (fwedge_rt.h):
 * fw_depthwise_conv2d_s8_dispatch runs it on CPUs that have AVX-512 VNNI. Its entry points take a _vnni
 * suffix. */
#define FW_VARIANT 1
#define fw_depthwise_conv2d_s8 fw_depthwise_conv2d_s8_vnni
#include "depthwise_s8.c"
#ifndef FW_CONV_VNNI_512
#error "depthwise_s8_vnni.c must be compiled with -march=x86-64-v4 -mavx512vnni (FW_VNNI_CFLAGS)"
#endif
