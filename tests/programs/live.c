/* live: a long-running multi-threaded program driven by commands on stdin, counting its own calls.
 *
 * Usage: live [NTHREADS]
 * Commands, one per line on stdin:
 *   run N    phase K: every worker thread calls alpha() and beta() N times each, then
 *            stdout gets "phase K alpha A beta B" (calls made in this phase, all threads)
 *   spin     the workers call alpha() and beta() without pause until "stop"; stdout gets
 *            "spun K" (the counts vary from run to run, so they go to stderr)
 *   stop     end a spin
 *   quit     stdout gets "count alpha TOTAL" and "count beta TOTAL" (of the run phases); exit 0
 * stdout starts with "ready" once every worker waits for work.
 * stderr: "pid P", "tid T" per worker, and per phase "window K START END" (CLOCK_MONOTONIC
 * seconds around it) and "phase K tid T alpha A beta B" per worker; the tests use them to
 * tell which traced calls belong to which phase, without trusting the tracer.
 * Between phases the workers sleep in pthread_cond_wait and the main thread in read(), so
 * attaching and changing what is traced finds threads blocked in system calls.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TRACED __attribute__((noipa))
#define MAX_THREADS 16

struct worker {
    pthread_t thread;
    long tid;
    long alpha, beta;        /* this phase */
};

static struct worker workers[MAX_THREADS];
static int nthreads;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static long phase, calls, finished, waiting;
static volatile int spinning;
long total_alpha, total_beta;
volatile long sink;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TRACED void alpha(struct worker *w)
{
    w->alpha++;
    sink += w->alpha;
}

TRACED void beta(struct worker *w)
{
    w->beta++;
    sink ^= w->beta;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    long seen = 0;

    w->tid = syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    waiting++;
    pthread_cond_broadcast(&done);
    for (;;) {
        while (phase == seen)
            pthread_cond_wait(&go, &lock);
        seen = phase;
        long n = calls;
        pthread_mutex_unlock(&lock);
        w->alpha = w->beta = 0;
        if (n < 0) {
            while (spinning) {
                alpha(w);
                beta(w);
            }
        } else {
            for (long i = 0; i < n; i++) {
                alpha(w);
                beta(w);
            }
        }
        pthread_mutex_lock(&lock);
        finished++;
        pthread_cond_broadcast(&done);
    }
    return NULL;
}

static void start_phase(long n)
{
    pthread_mutex_lock(&lock);
    finished = 0;
    calls = n;
    phase++;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
}

static void end_phase(double start)
{
    long a = 0, b = 0;

    pthread_mutex_lock(&lock);
    while (finished < nthreads)
        pthread_cond_wait(&done, &lock);
    pthread_mutex_unlock(&lock);
    double end = mono_now();
    for (int i = 0; i < nthreads; i++) {
        a += workers[i].alpha;
        b += workers[i].beta;
        fprintf(stderr, "phase %ld tid %ld alpha %ld beta %ld\n", phase, workers[i].tid,
                workers[i].alpha, workers[i].beta);
    }
    fprintf(stderr, "window %ld %.9f %.9f\n", phase, start, end);
    if (calls < 0) {
        printf("spun %ld\n", phase);
    } else {
        total_alpha += a;
        total_beta += b;
        printf("phase %ld alpha %ld beta %ld\n", phase, a, b);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    char line[128];
    double start = 0;

    nthreads = argc > 1 ? atoi(argv[1]) : 4;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "live: 1..%d threads\n", MAX_THREADS);
        return 2;
    }
    setvbuf(stderr, NULL, _IOLBF, 0);
    fprintf(stderr, "pid %ld\n", (long)getpid());
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            perror("pthread_create");
            return 2;
        }
    pthread_mutex_lock(&lock);
    while (waiting < nthreads)
        pthread_cond_wait(&done, &lock);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < nthreads; i++)
        fprintf(stderr, "tid %ld\n", workers[i].tid);
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run ", 4) == 0) {
            start = mono_now();
            start_phase(atol(line + 4));
            end_phase(start);
        } else if (strcmp(line, "spin\n") == 0) {
            spinning = 1;
            start = mono_now();
            start_phase(-1);
        } else if (strcmp(line, "stop\n") == 0) {
            spinning = 0;
            end_phase(start);
        } else if (strcmp(line, "quit\n") == 0) {
            break;
        }
    }
    printf("count alpha %ld\n", total_alpha);
    printf("count beta %ld\n", total_beta);
    return 0;
}
