/* tcb: the thread facts ktracecli's handlers read (thread pointer, rseq's CPU number).
 *
 * Usage: tcb CALLS [wait]
 * Two threads, each pinned to a CPU of its own (the first to the highest CPU the
 * process may use, the second to the lowest), call work() CALLS times.  Then the
 * main thread points its fs base at blocks of its own whose first word is not
 * their address (0, then 0x1234; each block ends a page that an inaccessible page
 * follows), calls bare() CALLS times with each, and puts its fs base back.
 * With "wait", the program first prints its facts and waits for a line on stdin.
 *
 * stdout: "count work N", "count bare N" (the same traced or not).
 * stderr: "tid T cpu C" per thread (its CPU, checked before and after its loop),
 *         "main_tid T", "rseq_offset O" and "rseq_size S" (glibc's).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BLOCK 64

static long calls;
static long count_work;
static long count_bare;

__attribute__((noipa)) void work(long *mine)
{
    (*mine)++;
    __atomic_fetch_add(&count_work, 1, __ATOMIC_RELAXED);
}

/* called with a foreign fs base: no TLS, no libc */
__attribute__((noipa)) void bare(void)
{
    count_bare++;
}

struct worker {
    pthread_t thread;
    int cpu;
    long calls;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    cpu_set_t one;

    CPU_ZERO(&one);
    CPU_SET(w->cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
    if (sched_getcpu() != w->cpu) {
        fprintf(stderr, "tcb: not on cpu %d\n", w->cpu);
        exit(2);
    }
    for (long i = 0; i < calls; i++)
        work(&w->calls);
    if (sched_getcpu() != w->cpu) {
        fprintf(stderr, "tcb: left cpu %d\n", w->cpu);
        exit(2);
    }
    fprintf(stderr, "tid %ld cpu %d\n", (long)syscall(SYS_gettid), w->cpu);
    return NULL;
}

static inline uintptr_t get_fs(void)
{
    uintptr_t fs;
    __asm__ volatile("rdfsbase %0" : "=r"(fs));
    return fs;
}

static inline void set_fs(uintptr_t fs)
{
    __asm__ volatile("wrfsbase %0" : : "r"(fs) : "memory");
}

/* a block ending its page, an inaccessible page after it */
static uintptr_t *foreign_block(uintptr_t first_word)
{
    long page = sysconf(_SC_PAGESIZE);
    char *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (area == MAP_FAILED || mprotect(area + page, page, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    uintptr_t *block = (uintptr_t *)(area + page - BLOCK);
    block[0] = first_word;
    return block;
}

int main(int argc, char **argv)
{
    cpu_set_t allowed;
    int lowest = -1, highest = -1;
    struct worker workers[2] = {{0}};

    calls = argc > 1 ? atol(argv[1]) : 1000;
    fprintf(stderr, "main_tid %ld\nrseq_offset %td\nrseq_size %u\n", (long)syscall(SYS_gettid),
            __rseq_offset, __rseq_size);
    if (argc > 2) {
        char line[8];
        if (!fgets(line, sizeof line, stdin))
            return 2;
    }
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        perror("sched_getaffinity");
        return 2;
    }
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &allowed)) {
            if (lowest < 0)
                lowest = cpu;
            highest = cpu;
        }
    workers[0].cpu = highest;
    workers[1].cpu = lowest;
    for (int i = 0; i < 2; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            perror("pthread_create");
            return 2;
        }
    for (int i = 0; i < 2; i++)
        pthread_join(workers[i].thread, NULL);

    uintptr_t *blocks[2] = {foreign_block(0), foreign_block(0x1234)};
    uintptr_t own = get_fs();
    for (int b = 0; b < 2; b++) {
        set_fs((uintptr_t)blocks[b]);
        for (long i = 0; i < calls; i++)
            bare();
        set_fs(own);
    }
    printf("count work %ld\ncount bare %ld\n", count_work, count_bare);
    return 0;
}
