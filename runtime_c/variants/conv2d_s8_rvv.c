/* conv2d_s8.c compiled for RVV 1.0 with FW_RVV_CFLAGS, for riscv64 dispatch builds (fwedge_rt.h):
 * fw_conv2d_s8_dispatch runs it on CPUs with the V extension. Its entry points take a _rvv
 * suffix. It reads the packed weights in the pair layout, as the baseline does. */
#define FW_VARIANT 1
#define fw_conv2d_s8 fw_conv2d_s8_rvv
#define fw_conv2d_s8_packed_size fw_conv2d_s8_packed_size_rvv
#define fw_pack_conv2d_s8_weights fw_pack_conv2d_s8_weights_rvv
#include "conv2d_s8.c"
#ifndef FW_RVV
#error "conv2d_s8_rvv.c must be compiled with the V extension (FW_RVV_CFLAGS) and RVV v0.12+ intrinsics"
#endif
