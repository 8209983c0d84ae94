/* workload: CALLS calls to one small function, spread over THREADS threads, timed by the program itself.
 *
 * Usage: workload [CALLS [THREADS [WARMUP]]]   (defaults 10000000, 1 and 0)
 *   WARMUP: calls each thread makes before the timed loop, in 16 rounds 20 ms apart, so that a
 *   tracer has drained its buffers and touched their pages before the timing starts
 * stdout:
 *   calls N        calls made in all (each thread makes CALLS/THREADS, the first one the rest too)
 *   threads T
 *   loop_ns NS     CLOCK_MONOTONIC from the moment all threads are released to the last one's end
 *                  (start-up and patching excluded)
 *   cpu_ns NS      CPU time the threads spent in their loops, summed (CLOCK_THREAD_CPUTIME_ID):
 *                  the cost per call whatever the number of cores
 *   maxrss_kb KB   the program's own peak resident memory (VmHWM: rings mapped into it included;
 *                  not getrusage, whose figure keeps the peak of the process before its exec)
 *   sum S          a checksum, the same traced or not
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_THREADS 256

volatile long sink;

__attribute__((noipa)) long bench_target(long x)
{
    return x * 7 + 1;
}

struct worker {
    pthread_t thread;
    long warmup;
    long calls;
    long sum;
    long long cpu_ns;
};

static pthread_barrier_t start_line;

static long long clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    long sum = 0;
    struct timespec pause = {0, 20000000};

    for (int round = 0; w->warmup && round < 16; round++) {
        for (long i = 0; i < w->warmup / 16; i++)
            sink += bench_target(i);
        nanosleep(&pause, NULL);
    }
    pthread_barrier_wait(&start_line);
    long long cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < w->calls; i++)
        sum += bench_target(i);
    w->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    w->sum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long calls = argc > 1 ? atol(argv[1]) : 10000000L;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    long warmup = argc > 3 ? atol(argv[3]) : 0;
    static struct worker workers[MAX_THREADS];

    if (threads < 1 || threads > MAX_THREADS || calls < 0) {
        fprintf(stderr, "usage: workload [CALLS [THREADS (1-%d) [WARMUP]]]\n", MAX_THREADS);
        return 2;
    }
    pthread_barrier_init(&start_line, NULL, threads + 1);
    for (int t = 0; t < threads; t++) {
        workers[t].calls = calls / threads + (t == 0 ? calls % threads : 0);
        workers[t].warmup = warmup;
        pthread_create(&workers[t].thread, NULL, run, &workers[t]);
    }
    pthread_barrier_wait(&start_line);
    long long start = clock_ns(CLOCK_MONOTONIC);
    long sum = 0;
    long long cpu = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(workers[t].thread, NULL);
        sum += workers[t].sum;
        cpu += workers[t].cpu_ns;
    }
    long long end = clock_ns(CLOCK_MONOTONIC);
    long hwm_kb = 0;
    char line[256];
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status))
        if (sscanf(line, "VmHWM: %ld kB", &hwm_kb) == 1)
            break;
    if (status)
        fclose(status);
    sink = sum;
    printf("calls %ld\nthreads %d\nloop_ns %lld\ncpu_ns %lld\nmaxrss_kb %ld\nsum %ld\n",
           calls, threads, end - start, cpu, hwm_kb, sum);
    return 0;
}
