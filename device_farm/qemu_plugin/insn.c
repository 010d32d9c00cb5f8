/* libinsn: counts the guest instructions a qemu-user run executes (fwedge's instruction bench).
 *
 * Usage: qemu-<arch> -plugin libinsn.so[,out=FILE][,mode=pcs] PROGRAM ...
 *
 * Every translation block gets an inline add of its instruction count to one counter, so the
 * count costs no helper call and depends only on the guest program and its inputs: the same run
 * gives the same number every time, unlike wall time under emulation. A block left early by a
 * fault counts in full (rare, and still the same every run). At exit the plugin writes
 * "fwedge-insn-total N" to qemu's log (shown with -d plugin) and, with out=FILE, to FILE.
 *
 * mode=pcs (needs out=FILE) also records, per translation block, its start address, its number
 * of instructions and how often it ran, and writes one "pcs VADDR N_INSNS EXECUTIONS" line per
 * block after the total, so that the count can be split by the guest binary's symbols. A block
 * translated again (after a flush, or a second block starting at the same address with another
 * length) gets a record of its own; the reader sums them.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

FWEDGE_EXPORT int qemu_plugin_version = FWEDGE_QEMU_PLUGIN_API_VERSION;

/* One translation block's record (mode=pcs); `executions` is bumped by qemu's inline add. */
typedef struct {
    uint64_t vaddr;
    uint64_t n_insns;
    uint64_t executions;
} block_record;

/* Records live in fixed-size chunks so their addresses, baked into translated code, never move. */
#define CHUNK_RECORDS 8192
typedef struct record_chunk {
    struct record_chunk *next;
    size_t used;
    block_record records[CHUNK_RECORDS];
} record_chunk;

static uint64_t total_insns;
static bool record_blocks;
static char *out_path;
static record_chunk *chunks;
static bool out_of_memory;
static pthread_mutex_t chunks_lock = PTHREAD_MUTEX_INITIALIZER;

static block_record *new_record(void)
{
    pthread_mutex_lock(&chunks_lock);
    if (chunks == NULL || chunks->used == CHUNK_RECORDS) {
        record_chunk *chunk = calloc(1, sizeof *chunk);
        if (chunk == NULL) {
            out_of_memory = true;
            pthread_mutex_unlock(&chunks_lock);
            return NULL;
        }
        chunk->next = chunks;
        chunks = chunk;
    }
    block_record *record = &chunks->records[chunks->used++];
    pthread_mutex_unlock(&chunks_lock);
    return record;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    const uint64_t n_insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total_insns, n_insns);
    if (record_blocks) {
        block_record *record = new_record();
        if (record != NULL) {
            record->vaddr = qemu_plugin_tb_vaddr(tb);
            record->n_insns = n_insns;
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &record->executions, 1);
        }
    }
}

static void write_report(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[96];
    snprintf(line, sizeof line, "fwedge-insn-total %" PRIu64 "\n", total_insns);
    qemu_plugin_outs(line);
    if (out_path == NULL) {
        return;
    }
    /* temp file, then rename: a reader never sees half a report */
    size_t temp_size = strlen(out_path) + 8;
    char *temp = malloc(temp_size);
    if (temp == NULL) {
        return;
    }
    snprintf(temp, temp_size, "%s.part", out_path);
    FILE *out = fopen(temp, "w");
    if (out == NULL) {
        qemu_plugin_outs("fwedge-insn error: cannot create the out= file\n");
        free(temp);
        return;
    }
    fputs(line, out);
    if (out_of_memory) {
        fputs("fwedge-insn error: out of memory for block records\n", out);
    }
    for (const record_chunk *chunk = chunks; chunk != NULL; chunk = chunk->next) {
        for (size_t i = 0; i < chunk->used; ++i) {
            const block_record *r = &chunk->records[i];
            if (r->executions != 0) {
                fprintf(out, "pcs %" PRIx64 " %" PRIu64 " %" PRIu64 "\n", r->vaddr, r->n_insns, r->executions);
            }
        }
    }
    if (fclose(out) == 0) {
        rename(temp, out_path);
    }
    free(temp);
}

FWEDGE_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; ++i) {
        /* the deprecated "arg=pcs" reaches the plugin as "pcs=on" */
        if (strcmp(argv[i], "mode=pcs") == 0 || strcmp(argv[i], "pcs=on") == 0) {
            record_blocks = true;
        } else if (strcmp(argv[i], "mode=total") == 0 || strcmp(argv[i], "total=on") == 0) {
            record_blocks = false;
        } else if (strncmp(argv[i], "out=", 4) == 0 && argv[i][4] != '\0') {
            out_path = strdup(argv[i] + 4);
        } else {
            fprintf(stderr, "libinsn: unknown argument '%s' (expected mode=total|pcs, out=FILE)\n", argv[i]);
            return -1;
        }
    }
    if (record_blocks && out_path == NULL) {
        fprintf(stderr, "libinsn: mode=pcs needs out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_report, NULL);
    return 0;
}
