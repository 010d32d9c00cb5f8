/* What the emulated aarch64 CPU tells a program: MIDR_EL1 and the kernel's HWCAP words.
 *
 * bench/instructions.py runs this under qemu-aarch64 -cpu CPU and writes a /proc/cpuinfo that
 * matches the answer for LiteRT (XNNPACK's CPU detection reads that file; qemu 7.2 would
 * otherwise hand the guest the host's x86 one). Linux lets user code read MIDR_EL1 (it traps and
 * emulates the access), and qemu-user does the same.
 */
#include <stdio.h>
#include <sys/auxv.h>

int main(void)
{
    unsigned long midr;
    __asm__ volatile("mrs %0, midr_el1" : "=r"(midr));
    printf("midr %#lx\nhwcap %#lx\nhwcap2 %#lx\n", midr, getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
    return 0;
}
