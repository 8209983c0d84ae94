/* workload: CALLS calls to one small function, spread over THREADS threads, timed by the program itself.
 *
 * Usage: workload [CALLS [THREADS]]   (defaults 10000000 and 1)
 * stdout:
 *   calls N        calls made in all (each thread makes CALLS/THREADS, the first one the rest too)
 *   threads T
 *   loop_ns NS     CLOCK_MONOTONIC from the moment all threads are released to the last one's end
 *                  (start-up and patching excluded)
 *   cpu_ns NS      CPU time the threads spent in their loops, summed (CLOCK_THREAD_CPUTIME_ID):
 *                  the cost per call whatever the number of cores
 *   maxrss_kb KB   the program's own peak resident memory (rings mapped into it included)
 *   sum S          a checksum, the same traced or not
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#define MAX_THREADS 256

volatile long sink;

__attribute__((noipa)) long bench_target(long x)
{
    return x * 7 + 1;
}

struct worker {
    pthread_t thread;
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
    static struct worker workers[MAX_THREADS];

    if (threads < 1 || threads > MAX_THREADS || calls < 0) {
        fprintf(stderr, "usage: workload [CALLS [THREADS (1-%d)]]\n", MAX_THREADS);
        return 2;
    }
    pthread_barrier_init(&start_line, NULL, threads + 1);
    for (int t = 0; t < threads; t++) {
        workers[t].calls = calls / threads + (t == 0 ? calls % threads : 0);
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
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    sink = sum;
    printf("calls %ld\nthreads %d\nloop_ns %lld\ncpu_ns %lld\nmaxrss_kb %ld\nsum %ld\n",
           calls, threads, end - start, cpu, usage.ru_maxrss, sum);
    return 0;
}
