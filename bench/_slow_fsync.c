/* A slower disk, for bench/negotiation.py --fsync-delay-us: fsync and fdatasync sleep
 * TDS_BENCH_FSYNC_DELAY_US microseconds before doing their work. And a stuck one, for
 * bench/stream.py: while the file TDS_BENCH_FSYNC_PAUSE_FILE exists, they wait. Loaded
 * with LD_PRELOAD into the connectors only; it changes nothing else they do. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static useconds_t delay_us(void) {
    const char *pause = getenv("TDS_BENCH_FSYNC_PAUSE_FILE");
    while (pause && access(pause, F_OK) == 0) usleep(10000);
    const char *s = getenv("TDS_BENCH_FSYNC_DELAY_US");
    return s ? (useconds_t)atoi(s) : 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    usleep(delay_us());
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    usleep(delay_us());
    return real(fd);
}
