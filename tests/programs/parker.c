/* parker: a thread that sleeps inside the first bytes of a traced function.
 *
 * park() is written in assembly so that its system call sits inside the 5 bytes the
 * ktrace engine overwrites:
 *
 *     park:  31 c0     xor eax, eax
 *            b0 22     mov al, 34         ; pause()
 *            0f 05     syscall            ; the thread sleeps here; the kernel restarts the
 *            c3        ret                ; call at the syscall instruction, inside the window
 *
 * A tracer must not patch park() while the parker thread sleeps in it, and must patch
 * it once the thread has left.
 *
 * Usage: parker
 * Commands, one per line on stdin:
 *   park     the parker thread calls park() (and sleeps in it until "wake")
 *   wake     SIGUSR1 to the parker thread: park() returns; stdout gets "unparked N"
 *   work N   the main thread calls alpha() N times; stdout gets "worked N"
 *   quit     stdout gets "count park P" and "count alpha A"; exit 0
 * stdout starts with "ready".
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

__asm__(".text\n"
        ".globl park\n"
        ".type park, @function\n"
        "park:\n"
        "    xor %eax, %eax\n"
        "    mov $34, %al\n"
        "    syscall\n"
        "    ret\n"
        ".size park, .-park\n");
long park(void);

long count_park, count_alpha;
volatile long sink;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long requested, unparked;
static volatile long parker_tid;

__attribute__((noipa)) void alpha(long i)
{
    count_alpha++;
    sink += i;
}

static void on_usr1(int sig)
{
    (void)sig;
}

static void *parker(void *arg)
{
    long done = 0;

    (void)arg;
    parker_tid = syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    for (;;) {
        while (requested == done)
            pthread_cond_wait(&cond, &lock);
        done++;
        pthread_mutex_unlock(&lock);
        park();
        count_park++;
        pthread_mutex_lock(&lock);
        unparked++;
        pthread_cond_broadcast(&cond);
    }
    return NULL;
}

int main(void)
{
    struct sigaction sa;
    pthread_t thread;
    char line[64];

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;  /* no SA_RESTART: pause() returns after the handler either way */
    sigaction(SIGUSR1, &sa, NULL);
    if (pthread_create(&thread, NULL, parker, NULL) != 0)
        return 2;
    while (!parker_tid)
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "park\n") == 0) {
            pthread_mutex_lock(&lock);
            requested++;
            pthread_cond_broadcast(&cond);
            pthread_mutex_unlock(&lock);
        } else if (strcmp(line, "wake\n") == 0) {
            pthread_mutex_lock(&lock);
            long want = requested;
            while (unparked < want) {
                pthread_mutex_unlock(&lock);
                syscall(SYS_tgkill, getpid(), parker_tid, SIGUSR1);
                usleep(2000);
                pthread_mutex_lock(&lock);
            }
            pthread_mutex_unlock(&lock);
            printf("unparked %ld\n", unparked);
            fflush(stdout);
        } else if (strncmp(line, "work ", 5) == 0) {
            long n = atol(line + 5);
            for (long i = 0; i < n; i++)
                alpha(i);
            printf("worked %ld\n", n);
            fflush(stdout);
        } else if (strcmp(line, "quit\n") == 0) {
            break;
        }
    }
    printf("count park %ld\n", count_park);
    printf("count alpha %ld\n", count_alpha);
    return 0;
}
