/* conv2d_s8.c compiled for ARMv8 with dotprod (FW_DOTPROD_CFLAGS), for aarch64 dispatch builds
 * (fwedge_rt.h): fw_conv2d_s8_dispatch runs it on CPUs that have sdot. Its entry points take a
 * _dotprod suffix. It reads the packed weights in the quad layout, as the baseline does. */
#define FW_VARIANT 1
#define fw_conv2d_s8 fw_conv2d_s8_dotprod
#define fw_conv2d_s8_packed_size fw_conv2d_s8_packed_size_dotprod
#define fw_pack_conv2d_s8_weights fw_pack_conv2d_s8_weights_dotprod
#include "conv2d_s8.c"
#ifndef FW_CONV_SDOT
#error "conv2d_s8_dotprod.c must be compiled with -mcpu=generic+dotprod (FW_DOTPROD_CFLAGS)"
#endif
