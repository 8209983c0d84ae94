/* threads: NTHREADS threads each call work() CALLS times, all started together.
 *
 * Usage: threads [NTHREADS [CALLS]]
 * stdout: "count work TOTAL" and "threads N" (the same traced or not).
 * stderr: one "tid T work C" line per thread (its kernel thread id and how many
 * times it called work), so the tests can check the per-thread counts by tid.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 64

long count_work;                 /* all threads, updated atomically */
static int calls_per_thread;
static pthread_barrier_t start_line;

struct worker {
    pthread_t thread;
    long tid;
    long calls;
};

__attribute__((noipa)) void work(long *mine)
{
    (*mine)++;
    __atomic_fetch_add(&count_work, 1, __ATOMIC_RELAXED);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    w->tid = syscall(SYS_gettid);
    pthread_barrier_wait(&start_line);
    for (int i = 0; i < calls_per_thread; i++)
        work(&w->calls);
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 4;
    struct worker workers[MAX_THREADS] = {0};

    calls_per_thread = argc > 2 ? atoi(argv[2]) : 1000;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "threads: 1..%d threads\n", MAX_THREADS);
        return 2;
    }
    pthread_barrier_init(&start_line, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            perror("pthread_create");
            return 2;
        }
    for (int i = 0; i < nthreads; i++)
        pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < nthreads; i++)
        fprintf(stderr, "tid %ld work %ld\n", workers[i].tid, workers[i].calls);
    printf("count work %ld\n", count_work);
    printf("threads %d\n", nthreads);
    return 0;
}
