/* The part of QEMU's TCG plugin API (version 1, as in Debian's qemu-user 7.2) that libinsn uses.
 *
 * Debian ships no qemu-plugin.h, so these declarations are written from the API's documented
 * signatures. The plugin is loaded by qemu with dlopen and links against the symbols that the
 * qemu-<arch> executable exports; nothing here is compiled into qemu.
 */
#ifndef FWEDGE_QEMU_PLUGIN_API_H
#define FWEDGE_QEMU_PLUGIN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FWEDGE_EXPORT __attribute__((visibility("default")))

/* qemu refuses a plugin whose version lies outside [its minimum, its current]; 7.2 has 0..1. */
#define FWEDGE_QEMU_PLUGIN_API_VERSION 1

typedef uint64_t qemu_plugin_id_t;

/* What qemu tells the plugin at install time. */
typedef struct {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;

/* Opaque: a translation block being translated. */
struct qemu_plugin_tb;

/* Inline operations qemu emits into translated code; version 1 has one. */
enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
};

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
/* Adds `imm` to the uint64_t at `ptr` every time the block executes, without a call. */
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
/* Writes to qemu's log (stderr unless -D names a file). */
void qemu_plugin_outs(const char *string);

#endif
