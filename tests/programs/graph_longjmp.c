/* graph_longjmp: longjmp out of traced frames, to a traced frame and to main.
 *
 *   main ─► catcher ─► thrower ─► thrower ─► thrower ──longjmp──► back in catcher
 *   main ─► after ─► leaf                  (must show at depth 1 again)
 *   main ─► thrower ─► thrower ──longjmp──► back in main; main ─► after ─► leaf
 *
 * The frames left by longjmp never return: the tracer must close them (their
 * entries are popped when the shadow stack resynchronises) and show later calls at
 * the right depth.
 *
 * Usage: graph_longjmp [ROUNDS]   (default 1)
 * stdout: "count NAME N" per function, then "result R"; exit status 0.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")

long count_catcher, count_thrower, count_after, count_leaf;
static jmp_buf *target;

TRACED long leaf(long x)
{
    count_leaf++;
    return x + 1;
}

TRACED void thrower(long n)
{
    count_thrower++;
    if (n < 0)
        return;
    if (n == 0)
        longjmp(*target, 1);
    thrower(n - 1);
    BARRIER();
}

TRACED long catcher(long n)
{
    jmp_buf here;
    count_catcher++;
    target = &here;
    if (setjmp(here) == 0) {
        thrower(n);
        return 0;
    }
    return 1;
}

TRACED long after(long x)
{
    count_after++;
    long r = leaf(x);
    BARRIER();
    return r;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 1;
    volatile long result = 0;
    for (volatile long i = 0; i < rounds; i++) {
        result += catcher(2);
        BARRIER();
        result += after(i);
        BARRIER();
        jmp_buf here;
        target = &here;
        if (setjmp(here) == 0)
            thrower(1);
        result += after(i);
        BARRIER();
    }
    printf("count catcher %ld\ncount thrower %ld\ncount after %ld\ncount leaf %ld\n",
           count_catcher, count_thrower, count_after, count_leaf);
    printf("result %ld\n", result);
    return 0;
}
