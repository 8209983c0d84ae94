/* graph_basic: call trees for the function_graph tracer, with what returns carry.
 *
 *   main ─► fact ─► fact ─► ... ─► leaf            (recursion, FACT_N deep)
 *   main ─► chain ─► chain ─► ... ─► leaf          (a deep call chain, CHAIN_N deep)
 *   main ─► pair_of                                (returns in rax:rdx)
 *   main ─► vec_of                                 (returns in xmm0:xmm1)
 *   main ─► flag_probe ─► flag_leaf                (returns with CF set: asm below)
 *
 * Usage: graph_basic [FACT_N [CHAIN_N]]   (default 3 2)
 * stdout: "count NAME N" per function, the results, and "returns ok" when every value
 * and flag came back as computed without tracing; exit status 0, or 3 when one did not.
 */
#include <stdio.h>
#include <stdlib.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")
#ifdef FENTRY
#define FENTRY_CALL "call __fentry__\n"
#else
#define FENTRY_CALL ""
#endif

long count_leaf, count_fact, count_chain, count_pair_of, count_vec_of, count_flag_probe, count_flag_leaf;

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

/* long flag_leaf(long x): returns x * 2 with the carry flag set to bit 0 of x.
 * long flag_probe(long x): calls flag_leaf(x), returns its result | CF << 60. */
long flag_probe(long x);
__asm__(
    ".text\n"
    ".globl flag_leaf\n"
    ".type flag_leaf, @function\n"
    "flag_leaf:\n"
    FENTRY_CALL
    "    lea rax, [rdi + rdi]\n"
    "    lock inc qword ptr [rip + count_flag_leaf]\n"
    "    bt rdi, 0\n"
    "    ret\n"
    ".size flag_leaf, .-flag_leaf\n"
    ".globl flag_probe\n"
    ".type flag_probe, @function\n"
    "flag_probe:\n"
    FENTRY_CALL
    "    push rbx\n"
    "    lock inc qword ptr [rip + count_flag_probe]\n"
    "    call flag_leaf\n"
    "    setc bl\n"
    "    movzx rbx, bl\n"
    "    shl rbx, 60\n"
    "    or rax, rbx\n"
    "    pop rbx\n"
    "    ret\n"
    ".size flag_probe, .-flag_probe\n");

int main(int argc, char **argv)
{
    long fact_n = argc > 1 ? atol(argv[1]) : 3;
    long chain_n = argc > 2 ? atol(argv[2]) : 2;
    int ok = 1;

    long f = fact(fact_n);
    long c = chain(chain_n);
    struct pair p = pair_of(7);
    struct vec v = vec_of(2.5);
    long odd = flag_probe(21), even = flag_probe(8);
    ok &= c == chain_n + 1;
    ok &= p.a == 21 && p.b == ~7L;
    ok &= v.x == 3.75 && v.y == -2.5;
    ok &= odd == (42 | 1L << 60) && even == 16;

    printf("count leaf %ld\ncount fact %ld\ncount chain %ld\ncount pair_of %ld\ncount vec_of %ld\n"
           "count flag_probe %ld\ncount flag_leaf %ld\n", count_leaf, count_fact, count_chain,
           count_pair_of, count_vec_of, count_flag_probe, count_flag_leaf);
    printf("fact %ld chain %ld pair %ld %ld vec %g %g flags %lx %lx\n", f, c, p.a, p.b, v.x, v.y, odd, even);
    printf("returns %s\n", ok ? "ok" : "BROKEN");
    return ok ? 0 : 3;
}
