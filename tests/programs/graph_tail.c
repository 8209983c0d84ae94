/* graph_tail: tail calls, which gcc -O2 turns into jumps from one traced function to another.
 *
 *   main ─► tail_top ─► tail_mid ══► tail_leaf          (══► : jmp, a tail call)
 *   main ─► tail_two ══► tail_mid ══► tail_leaf         (two in a row: three frames, one slot)
 *
 * At -O2 every "return f(...)" below is a jmp (the tests check the code with objdump);
 * the function_graph tracer must still show tail_mid inside tail_top, tail_leaf inside
 * tail_mid, and return to main with main's own return address.
 *
 * Usage: graph_tail [ROUNDS]   (default 2)
 * stdout: "count NAME N" per function, then "result R"; exit status R % 100.
 */
#include <stdio.h>
#include <stdlib.h>

#define TRACED __attribute__((noinline, noclone))
#define BARRIER() __asm__ volatile("" ::: "memory")

long count_tail_top, count_tail_mid, count_tail_leaf, count_tail_two;
volatile long sink;

TRACED long tail_leaf(long x)
{
    count_tail_leaf++;
    sink = x;
    return x * 3;
}

TRACED long tail_mid(long x)
{
    count_tail_mid++;
    sink = x;
    return tail_leaf(x + 1);
}

TRACED long tail_two(long x)
{
    count_tail_two++;
    sink = x;
    return tail_mid(x * 2);
}

TRACED long tail_top(long x)
{
    count_tail_top++;
    long r = tail_mid(x);
    BARRIER();
    return r + 1;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 2;
    long result = 0;
    for (long i = 0; i < rounds; i++) {
        result += tail_top(i);
        BARRIER();
        result += tail_two(i);
        BARRIER();
    }
    printf("count tail_top %ld\ncount tail_mid %ld\ncount tail_leaf %ld\ncount tail_two %ld\n",
           count_tail_top, count_tail_mid, count_tail_leaf, count_tail_two);
    printf("result %ld\n", result);
    return (int)(result % 100);
}
