/* elementwise_s8.c compiled for RVV 1.0 with FW_RVV_CFLAGS, for riscv64 dispatch builds (fwedge_rt.h):
 * fw_add_s8_dispatch / fw_mul_s8_dispatch runs it on CPUs with the V extension. Its entry points
 * take a _rvv suffix. */
#define FW_VARIANT 1
#define fw_add_s8 fw_add_s8_rvv
#define fw_mul_s8 fw_mul_s8_rvv
#include "elementwise_s8.c"
#ifndef __riscv_vector
#error "elementwise_s8_rvv.c must be compiled with the V extension (FW_RVV_CFLAGS)"
#endif
