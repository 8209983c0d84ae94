/* workload: CALLS calls to one small function, timed by the program itself.
 *
 * Usage: workload [CALLS]   (default 10000000)
 * stdout: "calls N", "loop_ns NS" (CLOCK_MONOTONIC around the loop only, so that
 * start-up and patching time can be told apart from per-call cost) and "sum S".
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile long sink;

__attribute__((noipa)) long bench_target(long x)
{
    return x * 7 + 1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long calls = argc > 1 ? atol(argv[1]) : 10000000L;
    long sum = 0;
    long long start = now_ns();

    for (long i = 0; i < calls; i++)
        sum += bench_target(i);
    long long end = now_ns();
    sink = sum;
    printf("calls %ld\nloop_ns %lld\nsum %ld\n", calls, end - start, sum);
    return 0;
}
