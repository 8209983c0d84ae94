/* forker: work() in a parent and in the child it forks, each process counting its own calls.
 *
 * Usage: forker N M
 *   the parent calls work() N times, forks; the child calls work() M times and exits 0;
 *   the parent waits for it, calls work() N more times.
 * stdout: "count work_parent 2N" and "count work_child M" (the parent prints both).
 * stderr: "parent PID" and "child PID" (each process its own), for the tests to tell
 * them apart in the trace.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

long count_work;
volatile long sink;

__attribute__((noipa)) void work(long i)
{
    count_work++;
    sink += i;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100, m = argc > 2 ? atol(argv[2]) : 50;
    int status;

    fprintf(stderr, "parent %ld\n", (long)getpid());
    for (long i = 0; i < n; i++)
        work(i);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 2;
    }
    if (child == 0) {
        fprintf(stderr, "child %ld\n", (long)getpid());
        count_work = 0;
        for (long i = 0; i < m; i++)
            work(i);
        _exit(count_work == m ? 0 : 1);
    }
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "forker: the child failed\n");
        return 2;
    }
    for (long i = 0; i < n; i++)
        work(i);
    printf("count work_parent %ld\n", count_work);
    printf("count work_child %ld\n", m);
    return 0;
}
