/* mcount: a program for the mcount engine, built with each kind of entry site
 * (-pg, -pg -mfentry, -mnop-mcount -mrecord-mcount, -fpatchable-function-entry).
 *
 *   main ─► tree ─► branch ─► leaf            (a call tree)
 *   main ─► fib ─► fib ...                    (recursion, kept a recursion by BARRIER)
 *   main ─► apply ─► (*op) = twice | thrice   (calls through a pointer)
 *   main ─► many_args                         (8 arguments: 2 on the stack; checked)
 *   thread i ─► worker ─► leaf ...            (NTHREADS threads, thread i calls leaf 10*(i+1) times)
 *
 * Usage: mcount [N [NTHREADS]]
 * stdout: "count NAME N" per function (each counts its own calls, atomically), then
 * "result R"; the exit status is R % 100, so that it too must come through tracing.
 * stderr: "pid P" and one "thread I tid T" line per thread, in thread order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef __clang__
#define TRACED __attribute__((noinline)) /* clang has no noipa */
#else
#define TRACED __attribute__((noipa))
#endif
#define BARRIER() __asm__ volatile("" ::: "memory")
#define COUNT(name) __atomic_fetch_add(&count_##name, 1, __ATOMIC_RELAXED)
#define MAX_THREADS 8

long count_leaf, count_branch, count_tree, count_fib, count_apply, count_twice, count_thrice,
    count_many_args, count_worker;
volatile long sink;

TRACED long leaf(long x)
{
    COUNT(leaf);
    return x * 2 + 1;
}

TRACED long branch(long x)
{
    COUNT(branch);
    long r = leaf(x);
    BARRIER();
    r += leaf(r);
    BARRIER();
    return r;
}

TRACED long tree(int n)
{
    COUNT(tree);
    long sum = 0;
    for (int i = 0; i < n; i++) {
        sum += branch(i);
        BARRIER();
    }
    return sum;
}

TRACED long fib(int n)
{
    COUNT(fib);
    if (n < 2)
        return n;
    long r = fib(n - 1);
    BARRIER();
    r += fib(n - 2);
    BARRIER();
    return r;
}

TRACED static long twice(long x)
{
    COUNT(twice);
    return 2 * x;
}

TRACED static long thrice(long x)
{
    COUNT(thrice);
    return 3 * x;
}

TRACED long apply(long (*op)(long), long x)
{
    COUNT(apply);
    long r = op(x);
    BARRIER();
    return r;
}

/* Arguments in all six registers and on the stack: a site that clobbered any of
 * them, or the stack, would change the result. */
TRACED long many_args(long a, long b, long c, long d, long e, long f, long g, long h)
{
    COUNT(many_args);
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}

struct job {
    pthread_t thread;
    int index;
    long tid;
    long result;
};

TRACED long worker(int index)
{
    COUNT(worker);
    long r = 0;
    for (int i = 0; i < 10 * (index + 1); i++) {
        r += leaf(i);
        BARRIER();
    }
    return r;
}

static void *thread_main(void *arg)
{
    struct job *job = arg;

    job->tid = syscall(SYS_gettid);
    job->result = worker(job->index);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10;
    int nthreads = argc > 2 ? atoi(argv[2]) : 3;
    struct job jobs[MAX_THREADS] = {0};
    long result = 0;

    if (nthreads < 0 || nthreads > MAX_THREADS) {
        fprintf(stderr, "mcount: 0..%d threads\n", MAX_THREADS);
        return 2;
    }
    fprintf(stderr, "pid %ld\n", (long)getpid());
    for (int i = 0; i < n; i++) {
        result += tree(i % 4);
        BARRIER();
        result += apply(i % 2 ? twice : thrice, i);
        BARRIER();
    }
    result += fib(n);
    BARRIER();
    for (long i = 0; i < n; i++) {
        long got = many_args(i, i + 1, i + 2, i + 3, i + 4, i + 5, i + 6, i + 7);
        BARRIER();
        if (got != 36 * i + 168) {
            fprintf(stderr, "many_args(%ld...) = %ld, not %ld\n", i, got, 36 * i + 168);
            return 3;
        }
        result += got;
    }
    /* one thread at a time, so that each thread's calls form one known sequence */
    for (int i = 0; i < nthreads; i++) {
        jobs[i].index = i;
        if (pthread_create(&jobs[i].thread, NULL, thread_main, &jobs[i]) != 0) {
            perror("pthread_create");
            return 2;
        }
        pthread_join(jobs[i].thread, NULL);
        result += jobs[i].result;
        fprintf(stderr, "thread %d tid %ld\n", i, jobs[i].tid);
    }

    printf("count leaf %ld\n", count_leaf);
    printf("count branch %ld\n", count_branch);
    printf("count tree %ld\n", count_tree);
    printf("count fib %ld\n", count_fib);
    printf("count apply %ld\n", count_apply);
    printf("count twice %ld\n", count_twice);
    printf("count thrice %ld\n", count_thrice);
    printf("count many_args %ld\n", count_many_args);
    printf("count worker %ld\n", count_worker);
    printf("result %ld\n", result);
    sink = result;
    return (int)(result % 100);
}
