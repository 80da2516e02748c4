/*
 * C tests of liblameduck, one behaviour per sub-test: `test_api <name>` (`--list` lists them).
 * The sub-tests live in files by concern (lifecycle, signals, ownership, options, null_args,
 * upgrade) and are compiled together with common.c into one program.
 * Driven by tests/c_api.rs, which runs each sub-test in its own process (built with
 * AddressSanitizer/UBSan, or under valgrind) and checks the exit status and stderr.
 * Sub-tests send real signals with kill(2) and wait on events, never on fixed sleeps,
 * except where a bound is asserted ("at least the drain delay").
 */
#include "common.h"

typedef struct {
    const char *name;
    int (*fn)(void);
} subtest;

#define SUBTEST_ENTRY(name) {#name, test_##name},
static const subtest subtests[] = {SUBTESTS(SUBTEST_ENTRY)};
#undef SUBTEST_ENTRY

int main(int argc, char **argv) {
    size_t n = sizeof subtests / sizeof subtests[0];
    if (argc != 2) {
        fprintf(stderr, "usage: %s <subtest>|--list\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], "--list") == 0) {
            printf("%s\n", subtests[i].name);
        } else if (strcmp(argv[1], subtests[i].name) == 0) {
            int rc = subtests[i].fn();
            if (rc == 0) printf("ok %s\n", subtests[i].name);
            return rc;
        }
    }
    if (strcmp(argv[1], "--list") == 0) return 0;
    fprintf(stderr, "unknown subtest %s\n", argv[1]);
    return 2;
}
