/* refused: functions ktrace must refuse to patch, next to one it must trace.
 *
 *   tiny:        31 c0      xor %eax, %eax          ; 3 bytes: shorter than the
 *                c3         ret                     ; 5-byte jmp rel32 ("too short")
 *
 *   loopy:       31 c0      xor %eax, %eax          ; offset 0
 *       .Lloop:  83 c0 01   add $1, %eax            ; offset 2  <─┐ a branch back into
 *                39 f8      cmp %edi, %eax          ;             │ bytes 1-4 of the
 *                7c f9      jl  .Lloop              ; ────────────┘ patch window
 *                48 83 05 <rel32> 01  addq $1, count_loopy(%rip)
 *                c3         ret
 *
 * tiny cannot count itself in 3 bytes: its caller counts the calls.  Both must still
 * run correctly when the program is traced (the "sum" line checks loopy's result).
 *
 * Usage: refused [N]    stdout: "count NAME N" lines and "sum S".
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

long count_tiny, count_loopy, count_fine;
volatile long sink;

int tiny(void);
int loopy(int n);

__asm__(
    "    .text\n"
    "    .p2align 4\n"
    "    .globl tiny\n"
    "    .type tiny, @function\n"
    "tiny:\n"
    "    xor %eax, %eax\n"
    "    ret\n"
    "    .size tiny, .-tiny\n"
    "\n"
    "    .p2align 4\n"
    "    .globl loopy\n"
    "    .type loopy, @function\n"
    "loopy:\n"
    "    xor %eax, %eax\n"
    "1:  add $1, %eax\n"
    "    cmp %edi, %eax\n"
    "    jl 1b\n"
    "    addq $1, count_loopy(%rip)\n"
    "    ret\n"
    "    .size loopy, .-loopy\n");

__attribute__((noipa)) int fine(int x)
{
    count_fine++;
    return x ^ 0x55;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 500;
    long sum = 0;

    for (int i = 0; i < n; i++) {
        count_tiny++;
        sum += tiny();
        sum += loopy(1 + i % 7);
        sum += fine(i);
    }
    printf("count tiny %ld\n", count_tiny);
    printf("count loopy %ld\n", count_loopy);
    printf("count fine %ld\n", count_fine);
    printf("sum %ld\n", sum);
    sink = sum;
    fprintf(stderr, "pid %ld\n", (long)getpid());
    return 0;
}
