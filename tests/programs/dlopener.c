/* dlopener: calls a library it loads with dlopen, after its own function, counting both.
 *
 * Usage: dlopener LIBRARY N M [wait]
 *   with "wait": print "waiting" and read a line from stdin first (a tracer attaches meanwhile);
 *   before_load() N times; dlopen(LIBRARY); plug_work() N times through dlsym; dlclose;
 *   dlopen(LIBRARY) again; plug_work() M times; dlclose.
 * stdout: "count before_load N", "count plug_work N+M", "result R".
 * The calls come right after dlopen returns: a tracer that enables the library's
 * functions later than "when it is mapped" misses some.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long count_before_load, count_plug_work;
volatile long sink;

__attribute__((noipa)) void before_load(long i)
{
    count_before_load++;
    sink += i;
}

static long use(const char *path, long n)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopener: %s\n", dlerror());
        exit(2);
    }
    long (*work)(long) = (long (*)(long))dlsym(lib, "plug_work");
    if (!work) {
        fprintf(stderr, "dlopener: %s\n", dlerror());
        exit(2);
    }
    long r = 0;
    for (long i = 0; i < n; i++) {
        r += work(i);
        count_plug_work++;
    }
    dlclose(lib);
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: dlopener LIBRARY N M\n");
        return 2;
    }
    long n = atol(argv[2]), m = atol(argv[3]), r = 0;
    if (argc > 4 && strcmp(argv[4], "wait") == 0) {
        char line[16];
        printf("waiting\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 2;
    }
    for (long i = 0; i < n; i++)
        before_load(i);
    r += use(argv[1], n);
    r += use(argv[1], m);
    printf("count before_load %ld\n", count_before_load);
    printf("count plug_work %ld\n", count_plug_work);
    printf("result %ld\n", r);
    return 0;
}
