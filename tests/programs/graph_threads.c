/* graph_threads: threads, a shadow stack each, and a thread that ends inside traced frames.
 *
 *   thread i (i = 0..NTHREADS-1) ─► t_main ─► t_work ─► t_leaf   (i + 1 times)
 *   the last thread ─► t_exiter ─► t_exit_inner ─► pthread_exit  (a forced unwind through
 *                                                                 hooked frames)
 *   main ─► t_leaf                                               (after joining them all)
 *   then AGAIN more exiters, one after the other: glibc gives each the stack (and thread
 *   pointer) of the one before, so each claims the slot its predecessor left with frames
 *   still on its shadow stack, and must start with an empty one
 *
 * Usage: graph_threads [NTHREADS [AGAIN]]   (defaults 3 and 0)
 * stdout: "count NAME N" per function, then "threads N"; exit status 0.
 * stderr: one "thread I tid T" line per worker thread and one "exiter tid T self P" line per
 * exiter (P: its pthread_self, the thread pointer its slot is keyed by).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")
#define COUNT(name) __atomic_fetch_add(&count_##name, 1, __ATOMIC_RELAXED)
#define MAX_THREADS 16

long count_t_main, count_t_work, count_t_leaf, count_t_exiter, count_t_exit_inner;
static pthread_barrier_t start_line;

TRACED long t_leaf(long x)
{
    COUNT(t_leaf);
    return x + 1;
}

TRACED long t_work(long n)
{
    COUNT(t_work);
    long r = 0;
    for (long i = 0; i <= n; i++) {
        r += t_leaf(i);
        BARRIER();
    }
    return r;
}

TRACED void *t_main(void *arg)
{
    long i = (long)arg;
    COUNT(t_main);
    fprintf(stderr, "thread %ld tid %ld\n", i, (long)syscall(SYS_gettid));
    pthread_barrier_wait(&start_line);
    long r = t_work(i);
    BARRIER();
    return (void *)r;
}

TRACED void t_exit_inner(long x)
{
    COUNT(t_exit_inner);
    pthread_exit((void *)x);
}

TRACED void *t_exiter(void *arg)
{
    COUNT(t_exiter);
    fprintf(stderr, "exiter tid %ld self %lu\n", (long)syscall(SYS_gettid), (unsigned long)pthread_self());
    if (arg != (void *)0)
        pthread_barrier_wait(&start_line);
    t_exit_inner((long)arg);
    BARRIER();
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 3;
    long again = argc > 2 ? atol(argv[2]) : 0;
    pthread_t threads[MAX_THREADS + 1];
    if (n < 1 || n > MAX_THREADS)
        return 2;
    pthread_barrier_init(&start_line, NULL, (unsigned)n + 1);
    for (long i = 0; i < n; i++)
        pthread_create(&threads[i], NULL, t_main, (void *)i);
    pthread_create(&threads[n], NULL, t_exiter, (void *)42L);
    long total = 0;
    for (long i = 0; i <= n; i++) {
        void *r;
        pthread_join(threads[i], &r);
        total += (long)r;
    }
    total += t_leaf(total);
    for (long k = 0; k < again; k++) {
        pthread_t t;
        void *r;
        pthread_create(&t, NULL, t_exiter, (void *)0);
        pthread_join(t, &r);
        total += (long)r;
    }
    printf("count t_main %ld\ncount t_work %ld\ncount t_leaf %ld\ncount t_exiter %ld\n"
           "count t_exit_inner %ld\nthreads %ld\nresult %ld\n", count_t_main, count_t_work,
           count_t_leaf, count_t_exiter, count_t_exit_inner, n, total);
    return 0;
}
