/* mcount_nofp: a -pg program with one function whose `call mcount` has no frame pointer.
 *
 * gcc refuses -pg with -fomit-frame-pointer, so the function is written in assembly:
 *
 *   nofp_leaf:  48 83 ec 08            sub  $8, %rsp            ; keeps mcount's stack aligned
 *               e8 <mcount@plt>        call mcount              ; rbp is still the CALLER's
 *               48 83 c4 08            add  $8, %rsp
 *               48 83 05 <rel32> 01    addq $1, count_nofp_leaf(%rip)
 *               48 8d 47 01            lea  1(%rdi), %rax
 *               c3                     ret
 *
 * [rbp+8] there is not nofp_leaf's return address: the mcount engine must refuse
 * nofp_leaf, still silence its site, and trace with_fp (plain C, -pg) normally.
 *
 * Usage: mcount_nofp [N]    stdout: "count NAME N" lines and "result R".
 */
#include <stdio.h>
#include <stdlib.h>

long count_nofp_leaf, count_with_fp;
volatile long sink;

long nofp_leaf(long x);

__asm__(
    "    .text\n"
    "    .p2align 4\n"
    "    .globl nofp_leaf\n"
    "    .type nofp_leaf, @function\n"
    "nofp_leaf:\n"
    "    sub $8, %rsp\n"
    "    call mcount@PLT\n"
    "    add $8, %rsp\n"
    "    addq $1, count_nofp_leaf(%rip)\n"
    "    lea 1(%rdi), %rax\n"
    "    ret\n"
    "    .size nofp_leaf, .-nofp_leaf\n");

__attribute__((noipa)) long with_fp(long x)
{
    count_with_fp++;
    return nofp_leaf(x) * 2;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20;
    long result = 0;

    for (int i = 0; i < n; i++) {
        result += with_fp(i);
        __asm__ volatile("" ::: "memory");
    }
    printf("count nofp_leaf %ld\n", count_nofp_leaf);
    printf("count with_fp %ld\n", count_with_fp);
    printf("result %ld\n", result);
    sink = result;
    return 0;
}
