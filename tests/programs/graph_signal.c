/* graph_signal: signal handlers that call traced functions while traced frames are live.
 *
 *   main ─► outer ─► raiser ─► raise(SIGUSR1) ⇒ on_usr1 ─► sig_leaf     (handler on this stack)
 *                           └► sig_leaf
 *   main ─► outer ─► raiser ─► raise(SIGUSR2) ⇒ on_usr2 ─► sig_leaf     (handler on a sigaltstack
 *                           └► sig_leaf                                  inside main's own frame,
 *                                                                         above the live frames)
 *   with STORM calls: a 200 us interval timer whose SIGALRM handler calls tick() while the
 *   main thread calls work() ─► sig_leaf in a loop, so that signals land inside the
 *   tracer's handler and return trampoline too.
 *
 * Usage: graph_signal [STORM]   (default 0)
 * stdout: "count NAME N" per function but tick, then "result R"; exit status 0.
 * stderr: "ticks N", the calls of tick (how many timer signals came varies from run to run).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")

long count_outer, count_raiser, count_sig_leaf, count_on_usr1, count_on_usr2, count_work, count_tick;
volatile sig_atomic_t ticks;

TRACED long sig_leaf(long x)
{
    count_sig_leaf++;
    return x + 1;
}

TRACED void on_usr1(int sig)
{
    count_on_usr1++;
    sig_leaf(sig);
    BARRIER();
}

TRACED void on_usr2(int sig)
{
    count_on_usr2++;
    sig_leaf(sig);
    BARRIER();
}

TRACED void tick(int sig)
{
    (void)sig;
    __atomic_fetch_add(&count_tick, 1, __ATOMIC_RELAXED);
    ticks++;
}

TRACED long raiser(long sig)
{
    count_raiser++;
    raise((int)sig);
    long r = sig_leaf(sig);
    BARRIER();
    return r;
}

TRACED long outer(long sig)
{
    count_outer++;
    long r = raiser(sig);
    BARRIER();
    return r;
}

TRACED long work(long x)
{
    count_work++;
    long r = sig_leaf(x);
    BARRIER();
    return r;
}

static void handle(int sig, void (*fn)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
    long storm = argc > 1 ? atol(argv[1]) : 0;
    long result = 0;
    char altstack[1 << 16];  /* in main's frame: above every frame main calls */
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};

    sigaltstack(&ss, NULL);
    handle(SIGUSR1, on_usr1, 0);
    handle(SIGUSR2, on_usr2, SA_ONSTACK);
    result += outer(SIGUSR1);
    BARRIER();
    result += outer(SIGUSR2);
    BARRIER();
    if (storm) {
        /* every 200 us of wall time: each signal stops the program under ptrace for some tens of
         * microseconds (ktracecli follows its signals), so a faster timer would leave it no time
         * to progress (CPU-time timers fire only at scheduler ticks, milliseconds apart) */
        handle(SIGALRM, tick, SA_RESTART);
        struct itimerval every = {{0, 200}, {0, 200}}, off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &every, NULL);
        for (long i = 0; i < storm; i++) {
            result += work(i) & 1;
            BARRIER();
        }
        while (ticks < 10)
            BARRIER();
        setitimer(ITIMER_REAL, &off, NULL);
    }
    printf("count outer %ld\ncount raiser %ld\ncount sig_leaf %ld\ncount on_usr1 %ld\n"
           "count on_usr2 %ld\ncount work %ld\n", count_outer, count_raiser, count_sig_leaf,
           count_on_usr1, count_on_usr2, count_work);
    fprintf(stderr, "ticks %ld\n", count_tick);
    printf("result %ld\n", storm ? 0 : result);
    return 0;
}
