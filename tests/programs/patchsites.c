/* patchsites: functions whose first bytes ktrace must relocate rather than refuse.
 *
 * Written in assembly so that every -O level and PIE mode gives the same entry bytes:
 *
 *   rip_first:   48 83 05 <rel32> 01     addq $1, count_rip_first(%rip)   ; RIP-relative
 *                c3                      ret
 *
 *   call_first:  e8 <rel32>              call cf_helper                   ; relative call
 *                48 83 05 <rel32> 01     addq $1, count_call_first(%rip)
 *                c3                      ret
 *   (cf_helper is entered with the stack 16-byte aligned, as __fentry__ is:
 *    a handler must not rely on the ABI's entry alignment.)
 *
 *   jcc_first:   85 ff                   test %edi, %edi
 *                74 08                   jz   .Lzero                      ; short jcc, bytes 2-3
 *                48 83 05 <rel32> 01     addq $1, count_jcc_nonzero(%rip)
 *        .Lzero: 48 83 05 <rel32> 01     addq $1, count_jcc_first(%rip)
 *                c3                      ret
 *
 * c_bump is plain C; at -O2 gcc starts it with "addl $1, count_c_bump(%rip)".
 *
 * Usage: patchsites [N]    stdout: "count NAME N" lines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

long count_rip_first, count_call_first, count_cf_helper, count_jcc_first, count_jcc_nonzero;
int count_c_bump;

void rip_first(void);
void call_first(void);
void jcc_first(int x);

__asm__(
    "    .text\n"
    "    .p2align 4\n"
    "    .globl rip_first\n"
    "    .type rip_first, @function\n"
    "rip_first:\n"
    "    addq $1, count_rip_first(%rip)\n"
    "    ret\n"
    "    .size rip_first, .-rip_first\n"
    "\n"
    "    .p2align 4\n"
    "    .globl cf_helper\n"
    "    .type cf_helper, @function\n"
    "cf_helper:\n"
    "    addq $1, count_cf_helper(%rip)\n"
    "    ret\n"
    "    .size cf_helper, .-cf_helper\n"
    "\n"
    "    .p2align 4\n"
    "    .globl call_first\n"
    "    .type call_first, @function\n"
    "call_first:\n"
    "    call cf_helper\n"
    "    addq $1, count_call_first(%rip)\n"
    "    ret\n"
    "    .size call_first, .-call_first\n"
    "\n"
    "    .p2align 4\n"
    "    .globl jcc_first\n"
    "    .type jcc_first, @function\n"
    "jcc_first:\n"
    "    test %edi, %edi\n"
    "    jz 1f\n"
    "    addq $1, count_jcc_nonzero(%rip)\n"
    "1:  addq $1, count_jcc_first(%rip)\n"
    "    ret\n"
    "    .size jcc_first, .-jcc_first\n");

__attribute__((noipa)) void c_bump(void)
{
    count_c_bump++;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;

    for (int i = 0; i < n; i++) {
        rip_first();
        call_first();
        jcc_first(i & 1);
        c_bump();
    }
    printf("count rip_first %ld\n", count_rip_first);
    printf("count call_first %ld\n", count_call_first);
    printf("count cf_helper %ld\n", count_cf_helper);
    printf("count jcc_first %ld\n", count_jcc_first);
    printf("count c_bump %d\n", count_c_bump);
    /* Not a function: how often jcc_first took the fall-through path.  It checks that
     * the relocated jz still branches the right way. */
    printf("nonzero %ld\n", count_jcc_nonzero);
    fprintf(stderr, "pid %ld\n", (long)getpid());
    return 0;
}
