// cxxlib: throws and catches N exceptions, so that libstdc++'s own functions can be traced
// through its soname (:mod:libstdc++.so.6), whatever file the soname links to.
//
// Usage: cxxlib [N]
// stdout: "count __cxa_allocate_exception N" (one per throw expression) and
// "count __cxa_begin_catch N" (one per catch block entered), then "caught N".
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

static long throws, catches;

__attribute__((noinline)) static void fail(long i)
{
    throws++;
    throw std::runtime_error(i % 2 ? "odd" : "even");
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? std::atol(argv[1]) : 10;
    for (long i = 0; i < n; i++) {
        try {
            fail(i);
        } catch (const std::exception &) {
            catches++;
        }
    }
    std::printf("count __cxa_allocate_exception %ld\ncount __cxa_begin_catch %ld\ncaught %ld\n",
                throws, catches, catches);
    return 0;
}
