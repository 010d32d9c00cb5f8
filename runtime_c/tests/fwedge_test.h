/* A tiny assertion harness for the runtime's C unit tests: CHECK counts, main prints the tally. */
#ifndef FWEDGE_TEST_H
#define FWEDGE_TEST_H

#include <stdio.h>

static int fw_test_passed = 0;
static int fw_test_failed = 0;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (cond) {                                                               \
            ++fw_test_passed;                                                     \
        } else {                                                                  \
            ++fw_test_failed;                                                     \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            printf(__VA_ARGS__);                                                  \
            printf("\n");                                                         \
        }                                                                         \
    } while (0)

#define CHECK_EQ_INT(actual, expected, what)                                                       \
    CHECK((long long)(actual) == (long long)(expected), "%s: got %lld, expected %lld", what,       \
          (long long)(actual), (long long)(expected))

/* Prints the closing line the pytest wrapper parses and returns the process exit code. */
static int fw_test_finish(void)
{
    printf("%d passed, %d failed\n", fw_test_passed, fw_test_failed);
    return fw_test_failed == 0 ? 0 : 1;
}

/* Deterministic pseudo-random numbers (64-bit LCG, Knuth's MMIX constants). */
static unsigned long long fw_test_state = 0x2545F4914F6CDD1DULL;

static int fw_test_rand(int lo, int hi)
{
    fw_test_state = fw_test_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (int)((fw_test_state >> 33) % (unsigned long long)(hi - lo + 1));
}

#endif
