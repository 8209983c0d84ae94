/* graph_fork: fork from inside traced frames; parent and child both go on tracing.
 *
 *   main ─► forker ─► fork() ─┬─ child:  forker ─► child_work ─► f_leaf; return from forker
 *                             │          (through the copied shadow stack); main ─► after_fork
 *                             └─ parent: forker ─► waitpid; forker ─► parent_work ─► f_leaf;
 *                                        main ─► after_fork
 *
 * Usage: graph_fork [ROUNDS]   (default 1)
 * stdout: each child's lines "child count NAME N" (the calls it made itself: it zeroes
 * the counts it inherited), then the parent's "count NAME N" and "result R" (the parent
 * waits for each child first, so the order is fixed).
 * stderr: "parent P" and "child C" (process ids); exit status 0 (the child's status is
 * checked by the parent: it exits 4 if the child did not exit 7).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")

long count_forker, count_child_work, count_parent_work, count_f_leaf, count_after_fork;

TRACED long f_leaf(long x)
{
    count_f_leaf++;
    return x + 1;
}

TRACED long child_work(long x)
{
    count_child_work++;
    long r = f_leaf(x);
    BARRIER();
    return r;
}

TRACED long parent_work(long x)
{
    count_parent_work++;
    long r = f_leaf(x);
    BARRIER();
    return r;
}

TRACED long forker(long x)
{
    count_forker++;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        count_forker = count_child_work = count_parent_work = count_f_leaf = count_after_fork = 0;
        return -child_work(x);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    fprintf(stderr, "child %d\n", (int)pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 7)
        exit(4);
    long r = parent_work(x);
    BARRIER();
    return r;
}

TRACED long after_fork(long x)
{
    count_after_fork++;
    return x * 2;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 1;
    long result = 0;
    fprintf(stderr, "parent %d\n", (int)getpid());
    for (long i = 0; i < rounds; i++) {
        long r = forker(i + 1);
        BARRIER();
        result += after_fork(r);
        BARRIER();
        if (r < 0) {  /* the child */
            printf("child count forker %ld\nchild count child_work %ld\nchild count parent_work %ld\n"
                   "child count f_leaf %ld\nchild count after_fork %ld\n", count_forker,
                   count_child_work, count_parent_work, count_f_leaf, count_after_fork);
            fflush(stdout);
            _exit(7);
        }
    }
    printf("count forker %ld\ncount child_work %ld\ncount parent_work %ld\ncount f_leaf %ld\n"
           "count after_fork %ld\n", count_forker, count_child_work, count_parent_work,
           count_f_leaf, count_after_fork);
    printf("result %ld\n", result);
    return 0;
}
