/* execer: calls tick() N times, then execs another program in its place (same pid).
 *
 * Usage: execer N PROGRAM [ARGS...]
 * stdout: "execer tick N" (flushed before the exec); then whatever PROGRAM prints.
 * stderr: "pid P".  The exit status is PROGRAM's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

long count_tick;
volatile long sink;

__attribute__((noipa)) void tick(long i)
{
    count_tick++;
    sink += i;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: execer N PROGRAM [ARGS...]\n");
        return 2;
    }
    long n = atol(argv[1]);
    fprintf(stderr, "pid %ld\n", (long)getpid());
    for (long i = 0; i < n; i++)
        tick(i);
    printf("execer tick %ld\n", count_tick);
    fflush(stdout);
    execv(argv[2], argv + 2);
    perror("execv");
    return 127;
}
