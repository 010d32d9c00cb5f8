/* fwedge C bundle harness: read inputs from a file, run the model, write outputs, time it.
 *
 * Usage: fwedge_model INPUT_FILE OUTPUT_FILE [COUNT [ITERATIONS]]
 *
 * INPUT_FILE holds COUNT samples back to back; each sample is every model input in order as
 * raw little-endian arrays in ONNX (NCHW) order, FWEDGE_INPUT_BYTES bytes in all. The file size
 * must be exactly COUNT * FWEDGE_INPUT_BYTES, otherwise the harness exits with status 2 and a
 * message, before reading any sample. OUTPUT_FILE receives COUNT samples of every output in
 * order, FWEDGE_OUTPUT_BYTES bytes each.
 *
 * With ITERATIONS > 0 the harness then runs the last sample ITERATIONS more times (after one
 * warm-up run) and prints one line per run, "fwedge-latency-ns <nanoseconds>", measured with
 * clock_gettime(CLOCK_MONOTONIC); a run-time dispatch build first prints "fwedge-kernels <name>",
 * the kernels it picked for this CPU (fw_kernels_name in fwedge_rt.h: e.g. avx512-vnni, avx2 or
 * baseline on x86-64). Exit status: 0 success, 1 I/O
 * failure, 2 usage or input size, 3 a CPU without the instructions the bundle was built for.
 *
 * Built with -DFW_PROFILE (fwedge profile), each timed iteration is two runs: one as above, its
 * "fwedge-latency-ns" line, then one with the per-step clock on (model.h), its
 * "fwedge-profiled-ns" line and "fwedge-profile-run <nanoseconds of each step of fwedge_run>";
 * at the end "fwedge-profile-clock-ns <the cost of one clock read, the mean of 1000 back to
 * back>": each step's time includes one clock read.
 *
 * OUTPUT_FILE must not be INPUT_FILE (by any path or link: exit 2), and it is written through a
 * temp file beside it that is renamed into place at the end, so a failed run leaves the previous
 * OUTPUT_FILE intact.
 */
#define _POSIX_C_SOURCE 200112L

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fwedge_rt.h"
#include "model.h"

static unsigned char input_buffer[FWEDGE_INPUT_BYTES];
static unsigned char output_buffer[FWEDGE_OUTPUT_BYTES];

static long parse_count(const char *text, const char *what)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > 100000000L) {
        fprintf(stderr, "error: %s must be a non-negative integer, got '%s'\n", what, text);
        return -1;
    }
    return value;
}

/* The first x86 instruction-set extension the build was compiled for (--cflags=-march=...) that
 * this CPU lacks, or NULL: such a bundle stops with a message instead of an illegal instruction
 * in the middle of a run. Portable builds and other architectures check nothing. */
static const char *missing_cpu_feature(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
#ifdef __AVX2__
    if (!__builtin_cpu_supports("avx2")) {
        return "AVX2";
    }
#endif
#ifdef __AVX512F__
    if (!__builtin_cpu_supports("avx512f")) {
        return "AVX-512F";
    }
#endif
#ifdef __AVX512BW__
    if (!__builtin_cpu_supports("avx512bw")) {
        return "AVX-512BW";
    }
#endif
#ifdef __AVX512VL__
    if (!__builtin_cpu_supports("avx512vl")) {
        return "AVX-512VL";
    }
#endif
#ifdef __AVX512VNNI__
    if (!__builtin_cpu_supports("avx512vnni")) {
        return "AVX-512 VNNI";
    }
#endif
#ifdef __AVXVNNI__
    if (!__builtin_cpu_supports("avxvnni")) {
        return "AVX-VNNI";
    }
#endif
#endif
    return NULL;
}

/* Opens a fresh temp file beside `path` for writing; its name goes to `temp` (size `room`). */
static FILE *open_temp_beside(const char *path, char *temp, size_t room)
{
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (snprintf(temp, room, "%s.%ld.%d.tmp", path, (long)getpid(), attempt) >= (int)room) {
            errno = ENAMETOOLONG;
            return NULL;
        }
        /* O_EXCL: never write through a file or link that is already there. */
        const int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) {
            FILE *file = fdopen(fd, "wb");
            if (!file) {
                close(fd);
                unlink(temp);
            }
            return file;
        }
        if (errno != EEXIST) {
            return NULL;
        }
    }
    return NULL;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#ifdef FW_PROFILE
long long fwedge_profile_clock(void)
{
    return now_ns();
}
#endif

int main(int argc, char **argv)
{
    const char *missing = missing_cpu_feature();
    if (missing) {
        fprintf(stderr, "error: this bundle was built for a CPU with %s and this CPU has none; rebuild it without "
                        "that -march (the portable build runs on any x86-64)\n", missing);
        return 3;
    }
    const void *inputs[FWEDGE_NUM_INPUTS];
    void *outputs[FWEDGE_NUM_OUTPUTS];
    size_t offset = 0;
    for (int i = 0; i < FWEDGE_NUM_INPUTS; ++i) {
        inputs[i] = input_buffer + offset;
        offset += fwedge_input_bytes[i];
    }
    offset = 0;
    for (int i = 0; i < FWEDGE_NUM_OUTPUTS; ++i) {
        outputs[i] = output_buffer + offset;
        offset += fwedge_output_bytes[i];
    }
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s INPUT_FILE OUTPUT_FILE [COUNT [ITERATIONS]]\n", argv[0]);
        fprintf(stderr, "  one sample is %d bytes of input (", FWEDGE_INPUT_BYTES);
        for (int i = 0; i < FWEDGE_NUM_INPUTS; ++i) {
            fprintf(stderr, "%s'%s' %u bytes", i ? ", " : "", fwedge_input_names[i], (unsigned)fwedge_input_bytes[i]);
        }
        fprintf(stderr, ") and %d bytes of output\n", FWEDGE_OUTPUT_BYTES);
        return 2;
    }
    const long count = argc > 3 ? parse_count(argv[3], "COUNT") : 1;
    const long iterations = argc > 4 ? parse_count(argv[4], "ITERATIONS") : 0;
    if (count < 0 || iterations < 0) {
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        fprintf(stderr, "error: cannot open input file '%s': %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (fseek(in, 0, SEEK_END) != 0) {
        fprintf(stderr, "error: cannot seek in input file '%s'\n", argv[1]);
        fclose(in);
        return 1;
    }
    const long size = ftell(in);
    const long long expected = (long long)count * FWEDGE_INPUT_BYTES;
    if (size < 0 || (long long)size != expected) {
        fprintf(stderr, "error: input file '%s' has %ld bytes, expected %lld (%ld sample(s) x %d bytes)\n", argv[1],
                size, expected, count, FWEDGE_INPUT_BYTES);
        fclose(in);
        return 2;
    }
    rewind(in);
    /* Compare the open input with whatever OUTPUT_FILE names now (the same path, a hard link or a
     * symlink): writing there would destroy the input before it is read. */
    struct stat in_stat, out_stat;
    if (fstat(fileno(in), &in_stat) != 0) {
        fprintf(stderr, "error: cannot stat input file '%s': %s\n", argv[1], strerror(errno));
        fclose(in);
        return 1;
    }
    if (stat(argv[2], &out_stat) == 0 && out_stat.st_dev == in_stat.st_dev && out_stat.st_ino == in_stat.st_ino) {
        fprintf(stderr, "error: output file '%s' is the same file as input file '%s'; give another output path\n",
                argv[2], argv[1]);
        fclose(in);
        return 2;
    }
    static char temp[4096];
    FILE *out = open_temp_beside(argv[2], temp, sizeof temp);
    if (!out) {
        fprintf(stderr, "error: cannot create output file '%s': %s\n", argv[2], strerror(errno));
        fclose(in);
        return 1;
    }
    for (long sample = 0; sample < count; ++sample) {
        if (fread(input_buffer, 1, FWEDGE_INPUT_BYTES, in) != FWEDGE_INPUT_BYTES) {
            fprintf(stderr, "error: short read of sample %ld from '%s'\n", sample, argv[1]);
            fclose(in);
            fclose(out);
            unlink(temp);
            return 1;
        }
        fwedge_run(inputs, outputs);
        if (fwrite(output_buffer, 1, FWEDGE_OUTPUT_BYTES, out) != FWEDGE_OUTPUT_BYTES) {
            fprintf(stderr, "error: cannot write outputs of sample %ld to '%s'\n", sample, argv[2]);
            fclose(in);
            fclose(out);
            unlink(temp);
            return 1;
        }
    }
    fclose(in);
    if (fclose(out) != 0) {
        fprintf(stderr, "error: cannot finish writing '%s'\n", argv[2]);
        unlink(temp);
        return 1;
    }
    if (rename(temp, argv[2]) != 0) {
        fprintf(stderr, "error: cannot move the outputs into '%s': %s\n", argv[2], strerror(errno));
        unlink(temp);
        return 1;
    }
    if (iterations > 0) {
#ifdef FW_RUNTIME_DISPATCH
        /* which kernels the timed runs use (fwedge_rt.h) */
        printf("fwedge-kernels %s\n", fw_kernels_name());
#endif
        fwedge_run(inputs, outputs); /* warm-up */
        for (long i = 0; i < iterations; ++i) {
            const long long start = now_ns();
            fwedge_run(inputs, outputs);
            const long long stop = now_ns();
            printf("fwedge-latency-ns %lld\n", stop - start);
#ifdef FW_PROFILE
            /* the same sample with the per-step clock on, right after the plain run */
            memset(fwedge_profile_ns, 0, sizeof fwedge_profile_ns);
            fwedge_profile_on = 1;
            const long long profiled_start = now_ns();
            fwedge_run(inputs, outputs);
            const long long profiled_stop = now_ns();
            fwedge_profile_on = 0;
            printf("fwedge-profiled-ns %lld\nfwedge-profile-run", profiled_stop - profiled_start);
            for (int step = 0; step < FWEDGE_PROFILE_STEPS; ++step) {
                printf(" %lld", fwedge_profile_ns[step]);
            }
            printf("\n");
#endif
        }
#ifdef FW_PROFILE
        const long long clock_start = now_ns();
        long long clock_last = clock_start;
        for (int read = 0; read < 1000; ++read) {
            clock_last = fwedge_profile_clock();
        }
        printf("fwedge-profile-clock-ns %lld\n", (clock_last - clock_start) / 1000);
#endif
    }
    return 0;
}
