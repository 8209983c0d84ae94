/* exits: ways for a traced program to end, and its stdin/stderr.
 *
 * Usage: exits MODE [N]
 *   exit3   call tick() N times, print the counts, exit with status 3
 *   signal  call tick() N times, print the counts, then kill itself with SIGUSR1
 *           (the shell reports 128+10)
 *   stdin   call tick() once per byte read from stdin, print the counts and the bytes
 * Always writes "stderr says hello" on stderr before ending.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long count_tick;
static unsigned long hash = 5381;

__attribute__((noipa)) void tick(int c)
{
    count_tick++;
    hash = hash * 33 + (unsigned)c;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "exit3";
    int n = argc > 2 ? atoi(argv[2]) : 100;

    if (strcmp(mode, "stdin") == 0) {
        int c;
        long bytes = 0;
        while ((c = getchar()) != EOF) {
            tick(c);
            bytes++;
        }
        printf("bytes %ld\n", bytes);
    } else {
        for (int i = 0; i < n; i++)
            tick(i);
    }
    printf("count tick %ld\n", count_tick);
    printf("hash %lu\n", hash);
    fflush(stdout);
    fputs("stderr says hello\n", stderr);

    if (strcmp(mode, "exit3") == 0)
        exit(3);
    if (strcmp(mode, "signal") == 0) {
        signal(SIGUSR1, SIG_DFL);
        kill(getpid(), SIGUSR1);
        pause();
        return 99; /* not reached */
    }
    return 0;
}
