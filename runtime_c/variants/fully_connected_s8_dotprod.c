/* fully_connected_s8.c compiled for ARMv8 with dotprod (FW_DOTPROD_CFLAGS), for aarch64 dispatch
 * builds (fwedge_rt.h): fw_fully_connected_s8_dispatch runs it on CPUs that have sdot. Its entry
 * point takes a _dotprod suffix. */
#define FW_VARIANT 1
#define fw_fully_connected_s8 fw_fully_connected_s8_dotprod
#include "fully_connected_s8.c"
#ifndef FW_CONV_SDOT
#error "fully_connected_s8_dotprod.c must be compiled with -mcpu=generic+dotprod (FW_DOTPROD_CFLAGS)"
#endif
