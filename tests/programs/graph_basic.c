/* graph_basic: call trees for the function_graph tracer, with what returns carry.
 *
 *   main ─► fact ─► fact ─► ... ─► leaf            (recursion, FACT_N deep)
 *   main ─► chain ─► chain ─► ... ─► leaf          (a deep call chain, CHAIN_N deep)
 *   main ─► pair_of                                (returns in rax:rdx)
 *   main ─► vec_of                                 (returns in xmm0:xmm1)
 *   main ─► flag_probe ─► flag_leaf                (returns with CF set: asm below)
 *   main ─► slow                                   (sleeps SLOW_US microseconds, if > 0)
 *
 * Build with -DFENTRY under -pg -mfentry, or -DMCOUNT under -pg, so that the two assembly
 * functions have the compiler's entry call too (-pg: after push rbp; mov rbp, rsp, as gcc
 * -O2 puts it, the frame popped right after).
 *
 * Usage: graph_basic [FACT_N [CHAIN_N [SLOW_US]]]   (default 3 2 0)
 * stdout: "count NAME N" per function, the results, and "returns ok" when every value
 * and flag came back as computed without tracing; exit status 0, or 3 when one did not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")
#if defined(FENTRY)
#define FENTRY_CALL "    call __fentry__@PLT\n"
#elif defined(MCOUNT)
#define FENTRY_CALL "    pushq %rbp\n    movq %rsp, %rbp\n    call *mcount@GOTPCREL(%rip)\n    popq %rbp\n"
#else
#define FENTRY_CALL ""
#endif

long count_leaf, count_fact, count_chain, count_pair_of, count_vec_of, count_flag_probe, count_flag_leaf,
    count_slow;

struct pair { long a, b; };
struct vec { double x, y; };

TRACED long leaf(long x)
{
    count_leaf++;
    return x + 1;
}

TRACED long fact(long n)
{
    count_fact++;
    long r = n <= 1 ? leaf(0) : n * fact(n - 1);
    BARRIER();
    return r;
}

TRACED long chain(long n)
{
    count_chain++;
    long r = n == 0 ? leaf(n) : chain(n - 1) + 1;
    BARRIER();
    return r;
}

TRACED struct pair pair_of(long a)
{
    count_pair_of++;
    return (struct pair){a * 3, ~a};
}

TRACED struct vec vec_of(double a)
{
    count_vec_of++;
    return (struct vec){a * 1.5, -a};
}

TRACED void slow(long usecs)
{
    count_slow++;
    struct timespec ts = {usecs / 1000000, usecs % 1000000 * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* long flag_leaf(long x): returns x * 2 with the carry flag set to bit 0 of x.
 * long flag_probe(long x): calls flag_leaf(x), returns its result | CF << 60. */
long flag_probe(long x);
__asm__(
    ".text\n"
    ".globl flag_leaf\n"
    ".type flag_leaf, @function\n"
    "flag_leaf:\n"
    FENTRY_CALL
    "    leaq (%rdi,%rdi), %rax\n"
    "    lock incq count_flag_leaf(%rip)\n"
    "    btq $0, %rdi\n"
    "    ret\n"
    ".size flag_leaf, .-flag_leaf\n"
    ".globl flag_probe\n"
    ".type flag_probe, @function\n"
    "flag_probe:\n"
    FENTRY_CALL
    "    pushq %rbx\n"
    "    lock incq count_flag_probe(%rip)\n"
    "    call flag_leaf\n"
    "    setc %bl\n"
    "    movzbq %bl, %rbx\n"
    "    shlq $60, %rbx\n"
    "    orq %rbx, %rax\n"
    "    popq %rbx\n"
    "    ret\n"
    ".size flag_probe, .-flag_probe\n");

int main(int argc, char **argv)
{
    long fact_n = argc > 1 ? atol(argv[1]) : 3;
    long chain_n = argc > 2 ? atol(argv[2]) : 2;
    long slow_us = argc > 3 ? atol(argv[3]) : 0;
    int ok = 1;

    long f = fact(fact_n);
    long c = chain(chain_n);
    struct pair p = pair_of(7);
    struct vec v = vec_of(2.5);
    long odd = flag_probe(21), even = flag_probe(8);
    if (slow_us > 0)
        slow(slow_us);
    ok &= c == chain_n + 1;
    ok &= p.a == 21 && p.b == ~7L;
    ok &= v.x == 3.75 && v.y == -2.5;
    ok &= odd == (42 | 1L << 60) && even == 16;

    printf("count leaf %ld\ncount fact %ld\ncount chain %ld\ncount pair_of %ld\ncount vec_of %ld\n"
           "count flag_probe %ld\ncount flag_leaf %ld\ncount slow %ld\n", count_leaf, count_fact,
           count_chain, count_pair_of, count_vec_of, count_flag_probe, count_flag_leaf, count_slow);
    printf("fact %ld chain %ld pair %ld %ld vec %g %g flags %lx %lx\n", f, c, p.a, p.b, v.x, v.y, odd, even);
    printf("returns %s\n", ok ? "ok" : "BROKEN");
    return ok ? 0 : 3;
}
