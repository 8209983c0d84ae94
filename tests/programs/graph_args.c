/* graph_args: traced functions whose arguments are on the stack, and results in xmm0.
 *
 *   main ─► many        ten integer arguments: four of them on the stack
 *   main ─► by_value    a 48-byte struct passed by value (copied on the stack)
 *   main ─► sum_va      a variadic function reading nine arguments (three on the stack)
 *   main ─► scale       double arguments and result (xmm0, xmm1)
 *
 * function_graph hooks a return by calling the rest of the traced function from its stub:
 * the function must find its stack arguments where its caller put them, above the return
 * address, exactly as untraced.  Every result feeds the printed result.
 *
 * Usage: graph_args [ROUNDS]   (default 100)
 * stdout: "count NAME N" per function, then "result R"; exit status R % 100.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define TRACED __attribute__((noinline, noclone))

struct six { long v[6]; };

long count_many, count_by_value, count_sum_va, count_scale;

TRACED long many(long a, long b, long c, long d, long e, long f, long g, long h, long i, long j)
{
    count_many++;
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h + 9 * i + 10 * j;
}

TRACED long by_value(struct six s, long k)
{
    count_by_value++;
    return s.v[0] + 3 * s.v[2] + s.v[5] * k;
}

TRACED long sum_va(int n, ...)
{
    count_sum_va++;
    va_list ap;
    va_start(ap, n);
    long s = 0;
    for (int i = 0; i < n; i++)
        s += va_arg(ap, long) * (i + 1);
    va_end(ap);
    return s;
}

TRACED double scale(double x, double y)
{
    count_scale++;
    return x * y + 0.25;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 100;
    long result = 0;
    struct six s = {{1, 2, 3, 4, 5, 6}};
    for (long i = 0; i < rounds; i++) {
        result += many(i, 1, 2, 3, 4, 5, 6, 7, 8, i + 9);
        s.v[5] = i;
        result += by_value(s, i + 1);
        result += sum_va(9, 1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L, i);
        result += (long)(4 * scale((double)i, 0.5));
    }
    printf("count many %ld\ncount by_value %ld\ncount sum_va %ld\ncount scale %ld\nresult %ld\n",
           count_many, count_by_value, count_sum_va, count_scale, result);
    return (int)(result % 100);
}
