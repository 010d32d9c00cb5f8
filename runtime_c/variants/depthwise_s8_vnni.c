/* depthwise_s8.c compiled for AVX-512 VNNI (FW_VNNI_CFLAGS): the variant
 * fw_depthwise_conv2d_s8_dispatch runs on CPUs that have it, in x86-64 dispatch builds
 * (fwedge_rt.h). */
#define FW_VARIANT_VNNI 1
#define fw_depthwise_conv2d_s8 fw_depthwise_conv2d_s8_vnni
#include "depthwise_s8.c"
#ifndef FW_CONV_VNNI_512
#error "depthwise_s8_vnni.c must be compiled with -march=x86-64-v4 -mavx512vnni (FW_VNNI_CFLAGS)"
#endif
