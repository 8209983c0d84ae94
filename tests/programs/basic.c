/* basic: a call tree and a recursion, each function counting its own calls.
 *
 *   main ─► top ─► mid ─► leaf_a
 *                      └► leaf_b
 *   main ─► leaf_b            (a second parent for leaf_b)
 *   main ─► fib ─► fib ...    (recursion, not turned into a loop: see BARRIER)
 *
 * Usage: basic [ITERATIONS [FIB_N]]
 * stdout: "count NAME N" per function, then "result R" (identical traced or not).
 * stderr: "pid P", "mono_start S" and "mono_end S" (CLOCK_MONOTONIC seconds), which
 * the tests use to check thread ids and timestamps without trusting the tracer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* noipa = noinline + noclone + no inter-procedural analysis: every call stays a call to
 * this very symbol (no .constprop/.isra clones) at every -O level. */
#define TRACED __attribute__((noipa))
/* An empty asm with a memory clobber after a call keeps it from being a tail call, so
 * the callee's parent is its caller and recursion is not turned into a loop. */
#define BARRIER() __asm__ volatile("" ::: "memory")

long count_leaf_a, count_leaf_b, count_mid, count_top, count_fib;
volatile long sink;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TRACED int leaf_a(int x)
{
    count_leaf_a++;
    return x + 1;
}

TRACED int leaf_b(int x)
{
    count_leaf_b++;
    return x * 3;
}

TRACED int mid(int x)
{
    count_mid++;
    int r = leaf_a(x);
    BARRIER();
    r += leaf_b(r);
    BARRIER();
    return r;
}

TRACED int top(int n)
{
    count_top++;
    int sum = 0;
    for (int i = 0; i < n; i++) {
        sum += mid(i);
        BARRIER();
    }
    return sum;
}

TRACED long fib(int n)
{
    count_fib++;
    if (n < 2)
        return n;
    long r = fib(n - 1);
    BARRIER();
    r += fib(n - 2);
    BARRIER();
    return r;
}

int main(int argc, char **argv)
{
    int iterations = argc > 1 ? atoi(argv[1]) : 100;
    int fib_n = argc > 2 ? atoi(argv[2]) : 15;
    long result = 0;

    fprintf(stderr, "pid %ld\n", (long)getpid());
    fprintf(stderr, "mono_start %.9f\n", mono_now());
    for (int i = 0; i < iterations; i++) {
        result += top(5);
        BARRIER();
    }
    for (int i = 0; i < 7; i++) {
        result += leaf_b(i);
        BARRIER();
    }
    result += fib(fib_n);
    BARRIER();
    fprintf(stderr, "mono_end %.9f\n", mono_now());

    printf("count leaf_a %ld\n", count_leaf_a);
    printf("count leaf_b %ld\n", count_leaf_b);
    printf("count mid %ld\n", count_mid);
    printf("count top %ld\n", count_top);
    printf("count fib %ld\n", count_fib);
    printf("result %ld\n", result);
    sink = result;
    return 0;
}
