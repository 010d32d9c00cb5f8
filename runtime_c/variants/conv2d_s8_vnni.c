/* conv2d_s8.c compiled for AVX-512 VNNI (FW_VNNI_CFLAGS): the variant fw_conv2d_s8_dispatch runs
 * on CPUs that have it, in x86-64 dispatch builds (fwedge_rt.h). Its entry points take a _vnni
 * suffix; its packed weights are the quad layout. */
#define FW_VARIANT_VNNI 1
#define fw_conv2d_s8 fw_conv2d_s8_vnni
#define fw_conv2d_s8_packed_size fw_conv2d_s8_packed_size_vnni
#define fw_pack_conv2d_s8_weights fw_pack_conv2d_s8_weights_vnni
#include "conv2d_s8.c"
#ifndef FW_CONV_VNNI_512
#error "conv2d_s8_vnni.c must be compiled with -march=x86-64-v4 -mavx512vnni (FW_VNNI_CFLAGS)"
#endif
